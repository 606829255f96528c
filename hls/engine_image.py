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
from dataclasses import replace
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


HEAD_NAME = "lm_head"  # the LM head's section: linear number layers * 7 of the program


def quantised_head(weights):
    """The LM head as integer codes when ``weights`` carry one (``LinearInts`` [vocab, hidden], DENSE W4, project
    contract 2), else None (a head the engine does not run: fp16, tied or untied)."""
    for name in ("lm_head_ints", "head_ints", "lm_head"):
        h = getattr(weights, name, None)
        if h is not None and hasattr(h, "codes") and hasattr(h, "zeros"):
            return h
    return None


def write_engine_image(out_dir, weights, board, lanes: int) -> dict:
    """Write ``weights.engine`` and ``blob_map.json`` for ``weights`` (``accllm.sim.golden.GoldenWeights``), with
    the LM head section when the weights carry a quantised head; returns the map."""
    w = EngineImageWriter(out_dir, weights.dims, board, lanes, head=quantised_head(weights))
    for i, linears in enumerate(weights.linears):
        w.add_layer(i, linears)
    return w.close()


class EngineImageWriter:
    """``weights.engine`` written a decoder layer at a time (each section packed and written at its place in the
    file, so memory holds one layer's linears), and ``blob_map.json`` on :meth:`close`. ``head``: the quantised LM
    head (:func:`quantised_head`), laid out after every decoder linear of each channel as DENSE W4 sections
    (``lm_head``, the program's linear ``layers * 7``) and written at once; None leaves it out."""

    def __init__(self, out_dir, dims, board, lanes: int, head=None):
        self.out_dir, self.dims = Path(out_dir), dims
        self.fmt, channels = engine_format(dims, board, lanes)
        names = [(f"layers.{i}.{name}", *dims.linear_shape(name)) for i in range(dims.layers) for name in LINEARS]
        self.layout = ws.layout_linears(names, self.fmt, channels, bool(dims.sparse))
        if head is not None:
            if tuple(head.codes.shape) != (dims.vocab, dims.hidden):
                raise ValueError(f"LM head codes {list(head.codes.shape)}, expected [{dims.vocab}, {dims.hidden}]")
            self.head_fmt = replace(self.fmt, wbits=ws.HEAD_WBITS)
            self.layout = ws.layout_linears([(HEAD_NAME, dims.vocab, dims.hidden)], self.head_fmt, channels,
                                            sparse=False, after=self.layout)
        sizes = self.layout.channel_bytes()
        self.offsets = np.concatenate([[0], np.cumsum([-(-s // REGION_ALIGN) * REGION_ALIGN for s in sizes])]).astype(int)
        self._file = open(self.out_dir / IMAGE_FILE, "wb")
        self._file.truncate(int(self.offsets[-1]))  # the gaps between regions read as zeros
        if head is not None:
            for sec in self.layout.sections:
                if sec.name == HEAD_NAME and sec.nbytes:
                    r0, r1 = sec.rows
                    self._write(sec, ws.pack_dense(head.codes[r0:r1], head.zeros[r0:r1],
                                                   head.scales[r0:r1].numpy(), self.head_fmt))

    def _write(self, sec, data: bytes) -> None:
        if len(data) != sec.nbytes:  # the layout and the packer are one definition; a difference is a bug
            raise AssertionError(f"{sec.name} channel {sec.channel}: packed {len(data)} bytes, layout says {sec.nbytes}")
        self._file.seek(int(self.offsets[sec.channel]) + sec.offset)
        self._file.write(data)

    def add_layer(self, index: int, linears: dict) -> None:
        """Pack and write every section of decoder layer ``index`` (``{name: LinearInts}``)."""
        d, fmt = self.dims, self.fmt
        for sec in self.layout.sections:
            if sec.nbytes == 0 or sec.name == HEAD_NAME:
                continue
            layer, name = sec.name.split(".")[1:]
            if int(layer) != index:
                continue
            lin = linears[name]
            r0, r1 = sec.rows
            scales = lin.scales[r0:r1].numpy()
            if d.sparse:
                data = ws.pack_sparse(lin.vals[r0:r1], lin.pos[r0:r1], lin.zeros[r0:r1], scales, fmt)
            else:
                data = ws.pack_dense(lin.codes[r0:r1], lin.zeros[r0:r1], scales, fmt)
            self._write(sec, data)

    def close(self) -> dict:
        self._file.close()
        m = dict(self.layout.to_json(), file=IMAGE_FILE, file_bytes=int(self.offsets[-1]),
                 channel_offsets=self.offsets[:-1].tolist(), scales={"stored": "fp16", "same_as": "golden model"})
        (self.out_dir / MAP_FILE).write_text(json.dumps(m, indent=1))
        return m
