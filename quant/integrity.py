"""The one definition of a folder's file manifest, ``files.sha256``, and of atomic writes.

A producer of files a backend loads (the compressed checkpoint, the compiled program/blob/HLS project, the
deploy folder) writes ``files.sha256`` beside them, in ``sha256sum`` format (``<hex>  <relative path>``, so
``sha256sum -c files.sha256`` checks it too). A loader calls :func:`verify` on the files it reads: a missing,
modified or truncated file is refused with a one-line error naming it. The manifest covering a file is found in
the file's own folder or the nearest folder above it (following symlinks, so a folder of links into a build is
checked against the build's manifest).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

MANIFEST = "files.sha256"
_CHUNK = 1 << 20


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a
    rerun after a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _files(folder: Path):
    """Regular files under ``folder`` (following symlinks) as (path, POSIX path relative to it), sorted; the
    manifest itself and hidden (temporary) files are left out."""
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if rel != MANIFEST and not name.startswith(".") and p.is_file():
                yield p, rel


def hash_files(folder) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (see :func:`_files`), sorted by path."""
    return dict(sorted((rel, file_sha256(p)) for p, rel in _files(Path(folder))))


# Source files whose content defines what the package does: code, kernel templates, RTL, recipes, data tables and
# the bundled model.
SOURCE_SUFFIXES = {".py", ".h", ".cpp", ".sv", ".v", ".tcl", ".json", ".jinja", ".yaml", ".safetensors"}


@functools.lru_cache(maxsize=None)
def source_hash(folders: tuple[str, ...]) -> str:
    """sha256 over the source files (paths and contents) of the package folders ``folders`` (``accllm.<folder>``,
    found without importing them): what a cached build must match to be taken for one this code would make."""
    h = hashlib.sha256()
    for folder in folders:
        for root in importlib.util.find_spec(f"accllm.{folder}").submodule_search_locations:
            root = Path(root)
            for f in sorted(root.rglob("*")):
                if f.suffix in SOURCE_SUFFIXES and f.is_file() and "__pycache__" not in f.parts:
                    h.update(f"{folder}/{f.relative_to(root).as_posix()}".encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def write_manifest(folder) -> Path:
    """``folder/files.sha256`` over every file under ``folder``."""
    folder = Path(folder)
    text = "".join(f"{h}  {rel}\n" for rel, h in hash_files(folder).items())
    return atomic_write(folder / MANIFEST, text)


def read_manifest(path) -> dict[str, str]:
    """``relative path -> sha256`` of a ``files.sha256``; a malformed line is refused naming the file."""
    path = Path(path)
    out = {}
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a sha256 manifest (not text); rebuild") from None
    for n, line in enumerate(lines, 1):
        h, sep, rel = line.partition("  ")
        if not sep or len(h) != 64 or any(c not in "0123456789abcdef" for c in h) or not rel:
            raise ValueError(f"{path}: line {n} is not '<sha256>  <file>'; the manifest is corrupt, rebuild")
        out[rel] = h
    return out


def _covering_manifest(path: Path) -> tuple[Path, str] | None:
    """The nearest ``files.sha256`` at or above the file's real location, and the file's name in it."""
    real = path.resolve()
    for folder in real.parents:
        m = folder / MANIFEST
        if m.is_file():
            return m, real.relative_to(folder).as_posix()
        if (folder / ".git").exists() or folder == folder.parent:
            return None
    return None


def verify(folder, names) -> None:
    """Check ``names`` (files or sub-folders, relative to ``folder``) against the manifest covering them;
    raises FileNotFoundError / ValueError naming the first file that is missing, modified or not covered."""
    folder = Path(folder)
    cache: dict[Path, dict[str, str]] = {}
    for name in names:
        p = folder / name
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing; rebuild (its folder's {MANIFEST} lists it)")
        files = [f for f, _ in _files(p)] if p.is_dir() else [p]
        for f in files:
            found = _covering_manifest(f)
            if found is None:
                raise ValueError(f"{f}: no {MANIFEST} covers it, so it cannot be checked; rebuild the folder")
            mpath, rel = found
            if mpath not in cache:
                cache[mpath] = read_manifest(mpath)
            want = cache[mpath].get(rel)
            if want is None:
                raise ValueError(f"{f}: not listed in {mpath}; the folder was changed after it was built, rebuild")
            if file_sha256(f) != want:
                raise ValueError(f"{f}: sha256 differs from {mpath}: the file was modified or is corrupt; rebuild")
        if p.is_dir():
            # A file the manifest lists under this folder that is gone.
            found = _covering_manifest(p / MANIFEST)
            if found is not None:
                mpath, rel = found
                prefix = rel[: -len(MANIFEST)]
                for listed in cache.setdefault(mpath, read_manifest(mpath)):
                    if listed.startswith(prefix) and not (mpath.parent / listed).is_file():
                        raise FileNotFoundError(f"{mpath.parent / listed} is missing; rebuild (listed in {mpath})")
