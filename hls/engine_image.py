"""The engine's memory image of a compiled model: every decoder linear in the weight stream
(:mod:`accllm.sim.weight_stream`), one region per memory channel, and the blob map that says where each section
lies and what it costs in bits per weight.

``weights.engine``  channel regions back to back, each starting on a 4 KiB boundary (``channel_offsets``); a
                    host loads region ``ch`` into memory channel ``ch`` (an HBM pseudo-channel, an HP port's DDR
                    window) and programs the engine's BASE registers with each section's address there.
``blob_map.json``   the layout (:class:`accllm.sim.weight_stream.Layout`: format, sections with channel, byte
                    offset inside the channel region, rows, K, mode; bytes and bits per dense-equivalent weight
                    per linear and in total), the file's channel offsets, and how the group scales were stored.

Group scales are fp16 in the stream, exactly the golden model's (``accllm.sim.golden.LinearInts`` rounds the
quantiser's float32 scales to fp16 once); the kernel and the engine dequantise with these.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from accllm.sim import weight_stream as ws
from accllm.sim.golden import LINEARS

IMAGE_FILE = "weights.engine"
MAP_FILE = "blob_map.json"
REGION_ALIGN = 4096


def engine_format(dims, board, lanes: int, wbits: int = 2) -> tuple[ws.StreamFormat, int]:
    """The stream format and channel count of a board (accllm.sim.perf_engine.board_format, as the perf model
    projects it): one channel per memory port of the board's port width, cores per channel picked for this model."""
    from types import SimpleNamespace

    from accllm.sim.perf_engine import board_format

    model = SimpleNamespace(layers=dims.layers, vocab=dims.vocab, hidden=dims.hidden,
                            linears=lambda: [(n, *dims.linear_shape(n)) for n in LINEARS])
    return board_format(board, dims.group, lanes, bool(dims.sparse), wbits, model=model)


def write_engine_image(out_dir, weights, board, lanes: int) -> dict:
    """Write ``weights.engine`` and ``blob_map.json`` for ``weights`` (``accllm.sim.golden.GoldenWeights``);
    returns the map."""
    d = weights.dims
    fmt, channels = engine_format(d, board, lanes)
    names = [(f"layers.{i}.{name}", *d.linear_shape(name)) for i in range(d.layers) for name in LINEARS]
    lay = ws.layout_linears(names, fmt, channels, bool(d.sparse))
    sizes = lay.channel_bytes()
    offsets = np.concatenate([[0], np.cumsum([-(-s // REGION_ALIGN) * REGION_ALIGN for s in sizes])]).astype(int)
    image = bytearray(int(offsets[-1]))
    for sec in lay.sections:
        if sec.nbytes == 0:
            continue
        layer, name = sec.name.split(".")[1:]
        lin = weights.linears[int(layer)][name]
        r0, r1 = sec.rows
        scales = lin.scales[r0:r1].numpy()
        if d.sparse:
            data = ws.pack_sparse(lin.vals[r0:r1], lin.pos[r0:r1], lin.zeros[r0:r1], scales, fmt)
        else:
            data = ws.pack_dense(lin.codes[r0:r1], lin.zeros[r0:r1], scales, fmt)
        if len(data) != sec.nbytes:  # the layout and the packer are one definition; a difference is a bug
            raise AssertionError(f"{sec.name} channel {sec.channel}: packed {len(data)} bytes, layout says {sec.nbytes}")
        start = int(offsets[sec.channel]) + sec.offset
        image[start: start + len(data)] = data
    out_dir = Path(out_dir)
    (out_dir / IMAGE_FILE).write_bytes(bytes(image))
    m = dict(lay.to_json(), file=IMAGE_FILE, file_bytes=len(image), channel_offsets=offsets[:-1].tolist(),
             scales={"stored": "fp16", "same_as": "golden model"})
    (out_dir / MAP_FILE).write_text(json.dumps(m, indent=1))
    return m
