"""The file container shared by the engine program and the weight blob (one definition of both headers).

    offset  size  field
    0       8     magic (b"ACLPROG\\0" or b"ACLBLOB\\0")
    8       4     format version (uint32 little-endian)
    12      4     length J of the JSON metadata (uint32)
    16      8     length P of the payload (uint64)
    24      32    sha256 of the payload
    56      J     JSON metadata (UTF-8)
    56+J    pad   zeros up to a multiple of 64
    ...     P     payload (what the engine reads from DDR)

A file with a wrong magic, version, truncated payload or checksum is refused with a ValueError naming it.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

_HEAD = struct.Struct("<8sIIQ32s")
ALIGN = 64


def _header(magic: bytes, version: int, meta: dict, nbytes: int, digest: bytes) -> bytes:
    js = json.dumps(meta, sort_keys=True).encode()
    head = _HEAD.pack(magic, version, len(js), nbytes, digest) + js
    return head + b"\0" * (-len(head) % ALIGN)


def write(path, magic: bytes, version: int, meta: dict, payload: bytes) -> Path:
    path = Path(path)
    path.write_bytes(_header(magic, version, meta, len(payload), hashlib.sha256(payload).digest()) + payload)
    return path


def write_from_file(path, magic: bytes, version: int, meta: dict, nbytes: int, digest: bytes, src,
                    chunk: int = 16 << 20) -> Path:
    """The same file as :func:`write`, its payload copied from the open binary file ``src`` (from its start) in
    chunks, so a payload larger than memory can be written; ``digest`` is the payload's sha256."""
    path = Path(path)
    src.seek(0)
    with open(path, "wb") as f:
        f.write(_header(magic, version, meta, nbytes, digest))
        left = nbytes
        while left:
            block = src.read(min(chunk, left))
            if not block:
                raise ValueError(f"{path}: the payload source ended {left} bytes early")
            f.write(block)
            left -= len(block)
    return path


def read(path, magic: bytes, version: int, what: str) -> tuple[dict, bytes]:
    """``(metadata, payload)``; raises ValueError for anything but an intact file of this kind and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if len(data) < _HEAD.size:
        raise ValueError(f"{path}: too short to be an accllm {what} ({len(data)} bytes)")
    m, ver, jlen, plen, digest = _HEAD.unpack_from(data)
    if m != magic:
        raise ValueError(f"{path}: not an accllm {what} (magic {m!r}, expected {magic!r})")
    if ver != version:
        raise ValueError(f"{path}: {what} format version {ver}, this accllm reads version {version}; recompile")
    start = _HEAD.size + jlen
    start += -start % ALIGN
    payload = data[start:start + plen]
    if len(payload) != plen:
        raise ValueError(f"{path}: truncated {what}: payload has {len(payload)} of {plen} bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{path}: {what} checksum mismatch (sha256): the file is corrupt")
    try:
        meta = json.loads(data[_HEAD.size:_HEAD.size + jlen])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt {what} metadata: {e}") from None
    return meta, payload


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
