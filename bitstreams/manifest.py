"""The bitstream manifest: which bitstreams exist, what they were built for, and their checksums.

``bitstreams/manifest.json`` (one file, format :data:`MANIFEST_FORMAT`) lists every bitstream the recipes in
``bitstreams/`` describe. An entry names the board, the engine parameters baked into the hardware, the program
and weight-blob format versions the kernel executes, and each artifact with its sha256 (``.xclbin`` for the
Vitis flow; ``.bit`` + ``.hwh`` for PYNQ, which reads the ``.hwh`` beside the ``.bit``). An entry whose
artifacts were never built is ``"built": false`` with no checksums: the runtime refuses it.

Before loading, the runtime calls :func:`verify_bitstream` with the manifest entry, the bitstream file and the
compiled program's header; any mismatch raises :class:`BitstreamMismatch` naming what differs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FORMAT = "accllm-bitstream-manifest-v1"
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.json"
ARTIFACTS = {"vitis": ("xclbin",), "vivado": ("bit", "hwh")}


class BitstreamMismatch(ValueError):
    """The bitstream does not match its manifest entry or the compiled program."""


class EngineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lanes: int = Field(gt=0)
    group: int = Field(gt=0)
    cores: int = Field(default=1, gt=0)
    out_depth: int = Field(default=8, gt=1)
    block: int = Field(default=1, gt=0)         # prefill block T of parameters.h: with dims, the tokens a run takes


class EngineRtl(BaseModel):
    """The engine RTL beside the HLS kernel (a bitstream built with ``ACCLLM_ENGINE_STREAM``): the host loads each
    channel's part of ``weights.engine`` and writes the channel's REGION register before the first run. The fields
    but ``kernel`` and ``banks`` are :data:`accllm.sim.engine_regs.IDENTITY`, what the engine's INFO / T report."""
    model_config = ConfigDict(extra="forbid")
    kernel: str                                 # Vitis: the engine's kernel name (xrt::ip); Vivado: its IP cell
    channels: int = Field(gt=0)
    cores: int = Field(gt=0)
    lanes: int = Field(gt=0)
    wbits: int = Field(gt=0)
    channel_bits: int = Field(gt=0)
    block: int = Field(gt=0)
    banks: list[int] = []                       # Vitis: memory bank (HBM pseudo channel) of each channel's master

    def identity(self) -> dict:
        from accllm.sim.engine_regs import IDENTITY

        return {k: getattr(self, k) for k in IDENTITY}

    @model_validator(mode="after")
    def _check(self):
        if self.banks and len(self.banks) != self.channels:
            raise ValueError(f"engine {self.kernel}: {len(self.banks)} banks for {self.channels} channels")
        return self


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str                                   # relative to the manifest's folder
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = None


class BitstreamEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    board: str
    flow: Literal["vitis", "vivado"]
    kernel: str                                 # HLS top function = kernel / IP name
    engine: EngineParams
    dims: dict[str, int | float | bool]         # model dimensions baked into the kernel (its parameters.h)
    program_format: int
    blob_format: int
    clock_mhz: float
    built: bool = False
    artifacts: dict[str, Artifact]
    tool: str | None = None                     # e.g. "Vitis 2023.2", recorded by the build
    recipe: str                                 # folder under bitstreams/ holding the recipe
    engine_rtl: EngineRtl | None = None         # the engine RTL the HLS kernel drives; None: the kernel alone

    @model_validator(mode="after")
    def _check(self):
        want = set(ARTIFACTS[self.flow])
        if set(self.artifacts) != want:
            raise ValueError(f"{self.name}: a {self.flow} bitstream has artifacts {sorted(want)}, got {sorted(self.artifacts)}")
        if self.built and any(a.sha256 is None for a in self.artifacts.values()):
            raise ValueError(f"{self.name}: marked built but an artifact has no sha256")
        if self.engine_rtl is not None and self.flow == "vitis" and not self.engine_rtl.banks:
            raise ValueError(f"{self.name}: a vitis bitstream's engine_rtl needs the memory bank of each channel")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["accllm-bitstream-manifest-v1"] = MANIFEST_FORMAT
    bitstreams: list[BitstreamEntry] = []

    def entry(self, name: str) -> BitstreamEntry:
        for e in self.bitstreams:
            if e.name == name:
                return e
        raise KeyError(f"no bitstream {name!r} in the manifest; it lists {', '.join(e.name for e in self.bitstreams) or 'none'}")

    @model_validator(mode="after")
    def _unique(self):
        names = [e.name for e in self.bitstreams]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate bitstream names: {', '.join(sorted(dup))}")
        return self


def load_manifest(path: str | Path = DEFAULT_MANIFEST) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no bitstream manifest at {path}")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as e:
        raise ValueError(f"{path}: invalid bitstream manifest: {e}") from None


def save_manifest(manifest: Manifest, path: str | Path = DEFAULT_MANIFEST) -> Path:
    path = Path(path)
    path.write_text(json.dumps(manifest.model_dump(), indent=1) + "\n")
    return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_build(manifest: Manifest, name: str, root: str | Path, tool: str | None = None) -> BitstreamEntry:
    """After a real build: checksum the entry's artifacts (under ``root``, the manifest's folder) and mark it built."""
    e = manifest.entry(name)
    arts = {}
    for kind, a in e.artifacts.items():
        p = Path(root) / a.path
        if not p.is_file():
            raise FileNotFoundError(f"{name}: artifact {kind} not found at {p}; build it first")
        arts[kind] = Artifact(path=a.path, sha256=sha256_file(p), bytes=p.stat().st_size)
    new = e.model_copy(update={"artifacts": arts, "built": True, "tool": tool or e.tool})
    manifest.bitstreams[manifest.bitstreams.index(e)] = new
    return new


def _field(header, name: str):
    if isinstance(header, Mapping):
        return header.get(name)
    return getattr(header, name, None)


def engine_problems(entry: BitstreamEntry, program_header) -> list[str]:
    """Differences between the bitstream's engine RTL and the engine the build's image needs (the header's
    ``engine_rtl``: :func:`accllm.sim.engine_regs.identity` of the build, None when it has no engine image)."""
    if entry.engine_rtl is None:
        return []  # the HLS kernel alone computes every linear; a build's engine image is not used
    need = _field(program_header, "engine_rtl")
    if need is None:
        return [f"engine: the bitstream drives the engine RTL ({entry.engine_rtl.kernel}), the build has no engine "
                "image (weights.engine, blob_map.json); recompile"]
    have = entry.engine_rtl.identity()
    diff = [k for k in have if int(need.get(k, -1)) != have[k]]
    return ["engine: the build's weights.engine needs " + ", ".join(f"{k} {need.get(k)}" for k in diff)
            + ", the bitstream's engine has " + ", ".join(f"{k} {have[k]}" for k in diff)] if diff else []


def program_problems(entry: BitstreamEntry, program_header) -> list[str]:
    """Differences between what the bitstream was built for and what the compiled program needs: format versions,
    engine parameters, the engine RTL, the model dimensions (``program_header`` as :func:`verify_bitstream`)."""
    problems = []
    for key, have in (("program_format", entry.program_format), ("blob_format", entry.blob_format),
                      ("lanes", entry.engine.lanes), ("group", entry.engine.group), ("block", entry.engine.block)):
        got = _field(program_header, key)
        if got is None:
            problems.append(f"{key}: the program header does not state it")
        elif int(got) != int(have):
            what = "format version" if key.endswith("format") else "engine parameter"
            problems.append(f"{key}: the program has {what} {got}, the bitstream {entry.name!r} was built for {have}")
    problems += engine_problems(entry, program_header)
    dims = _field(program_header, "dims")
    if dims is None:
        problems.append("dims: the program header does not state the model dimensions")
    else:
        diff = sorted(k for k in set(dims) | set(entry.dims) if dims.get(k) != entry.dims.get(k))
        if diff:
            problems.append("model dimensions: the program and the bitstream differ in " + ", ".join(
                f"{k} ({dims.get(k)} vs {entry.dims.get(k)})" for k in diff) + " (the kernel was synthesised for "
                "another model; rebuild the bitstream from this compiled build)")
    return problems


def verify_bitstream(entry: BitstreamEntry | Mapping, bitstream_path: str | Path, program_header,
                     board: str | None = None) -> BitstreamEntry:
    """Check a bitstream against its manifest entry and the compiled program before loading it.

    ``program_header`` (a mapping or an object with these attributes) gives ``program_format`` and
    ``blob_format`` (the version numbers the compiler wrote), ``lanes`` / ``group`` / ``block`` (the engine
    parameters the program was compiled for; the prefill block sets, with the dimensions, the size of the kernel's
    tokens port) and ``dims`` (the model dimensions); ``board``, when given, is the board the
    runtime is on. Raises
    :class:`BitstreamMismatch` naming every difference; returns the validated entry.
    """
    if not isinstance(entry, BitstreamEntry):
        entry = BitstreamEntry.model_validate(dict(entry))
    path = Path(bitstream_path)
    problems = []
    if not entry.built:
        raise BitstreamMismatch(f"bitstream {entry.name!r} is marked unbuilt in the manifest: build it with the "
                                f"recipe in bitstreams/{entry.recipe} and record its checksums first")
    if board is not None and board.lower() != entry.board.lower():
        problems.append(f"board: the manifest entry is for {entry.board!r}, this is {board!r}")
    main_kind = ARTIFACTS[entry.flow][0]
    files = {main_kind: path}
    if entry.flow == "vivado":  # PYNQ loads the .hwh with the same stem beside the .bit
        files["hwh"] = path.with_suffix(".hwh")
    for kind, p in files.items():
        want = entry.artifacts[kind].sha256
        if not p.is_file():
            problems.append(f"{kind}: file {p} not found")
            continue
        got = sha256_file(p)
        if got != want:
            problems.append(f"{kind}: sha256 of {p} is {got[:16]}..., the manifest says {want[:16]}... "
                            "(a different or corrupted build)")
    problems += program_problems(entry, program_header)
    if problems:
        raise BitstreamMismatch(f"refusing to load bitstream {entry.name!r} ({path}):\n  " + "\n  ".join(problems))
    return entry


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m accllm.bitstreams.manifest", description="Edit bitstreams/manifest.json")
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="add (or replace) an unbuilt entry written by accllm.bitstreams.build")
    a.add_argument("entry", type=Path)
    r = sub.add_parser("record", help="after a real build: checksum an entry's artifacts and mark it built")
    r.add_argument("name")
    r.add_argument("--tool", default=None)
    args = p.parse_args(argv)
    m = load_manifest(args.manifest) if args.manifest.is_file() else Manifest()
    if args.cmd == "add":
        e = BitstreamEntry.model_validate_json(args.entry.read_text())
        m.bitstreams = [x for x in m.bitstreams if x.name != e.name] + [e]
    else:
        e = record_build(m, args.name, args.manifest.parent, args.tool)
        print(f"{e.name}: " + ", ".join(f"{k} sha256 {a.sha256}" for k, a in e.artifacts.items()))
    print(f"wrote {save_manifest(m, args.manifest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
