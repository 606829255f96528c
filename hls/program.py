"""The engine program (instruction stream): ONE definition, used by the compiler, the HLS kernel/C-sim and the runtime.

Container: :mod:`accllm.hls.container` (magic ``ACLPROG``, versioned, sha256). Metadata: engine dimensions,
engine parameters, ``blob_sha256`` (the program runs only on the blob it was compiled with), trace layout.
Payload: ``n`` instructions of 32 bytes, little-endian::

    uint8 op, uint8 mode, uint16 layer, uint32 arg[7]

One program run computes one token at stream position ``pos`` (kernel arguments ``token``, ``pos``), or in
prefill a block of up to ``engine.prefill_block`` tokens at ``pos ..`` (each instruction for the whole block: one
weight pass per linear); the host never recompiles per token. Buffers are the kernel's on-chip float32 vectors
(``BUF_*``, one per token of a block). Offsets are
byte offsets into the blob payload; ``NONE`` marks an absent trace slot.

    op          mode            args
    EMBED       -               dst, embed_off
    RMSNORM     -               src, dst, weight_off, n
    LINEAR      DENSE|SPARSE    src | dst << 8, stream_off, linear, N, K, act_trace, acc_trace
                                (mode byte: mode | wbits << 4, :func:`mode_byte`; wbits 2 or 4)
                                (stream_off: the linear's weight stream, fp16 scales inside; linear: its index
                                layer * 7 + position in accllm.sim.golden.LINEARS, i.e. its sections in the
                                engine image, accllm.hls.engine_image)
    ATTENTION   -               q, k, v, dst, trace_off (of k_code; the attention fields follow in order),
                                rope_off (the blob's rope_table section, accllm.sim.nonlinear.rope_table)
    ADD         -               dst, src, n                     dst += src  (float32)
    SILU_MUL    -               dst, src, n                     dst = silu(dst) * src
    LMHEAD      DENSE, wbits 4  src, stream_off, linear, N = vocab, K = hidden, act_trace, acc_trace
                                (the LINEAR operands: the head is a DENSE W4 weight-stream section, linear =
                                layers * 7; runs on a run's last token; its output is the top-K, engine.topk,
                                and the full logits when the run asks; layer = layers, so its trace fields
                                land in the head region after the last token's layers,
                                accllm.sim.golden.head_trace_fields)
    END
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from accllm.hls import container
from accllm.sim.engine_regs import WBITS, mode_byte, split_mode  # noqa: F401  (the one definition)

MAGIC = b"ACLPROG\0"
VERSION = 2  # v2: ATTENTION points at the RoPE table; LINEAR / LMHEAD mode byte = mode | wbits << 4 (contract 1)
RECORD = struct.Struct("<BBH7I")
NONE = 0xFFFFFFFF

OP_END, OP_EMBED, OP_RMSNORM, OP_LINEAR, OP_ATTENTION, OP_ADD, OP_SILU_MUL, OP_LMHEAD = range(8)
OP_NAMES = ["END", "EMBED", "RMSNORM", "LINEAR", "ATTENTION", "ADD", "SILU_MUL", "LMHEAD"]
BUF_X, BUF_H, BUF_Q, BUF_K, BUF_V, BUF_O, BUF_G, BUF_U, BUF_Y = range(9)
BUF_NAMES = ["X", "H", "Q", "K", "V", "O", "G", "U", "Y"]




@dataclass
class Instr:
    op: int
    mode: int = 0
    layer: int = 0
    args: tuple = ()

    def pack(self) -> bytes:
        a = list(self.args) + [0] * (7 - len(self.args))
        return RECORD.pack(self.op, self.mode, self.layer, *a)

    def __str__(self) -> str:
        return f"{OP_NAMES[self.op]:<9} mode={self.mode} layer={self.layer} args={list(self.args)}"


def linear(mode, layer, src, dst, stream_off, linear_index, n, k, act_trace=NONE, acc_trace=NONE,
           wbits: int = 2) -> Instr:
    return Instr(OP_LINEAR, mode_byte(mode, wbits), layer,
                 (src | dst << 8, stream_off, linear_index, n, k, act_trace, acc_trace))


def lmhead(mode, wbits, layer, src, stream_off, linear_index, n, k, act_trace=NONE, acc_trace=NONE) -> Instr:
    return Instr(OP_LMHEAD, mode_byte(mode, wbits), layer, (src, stream_off, linear_index, n, k, act_trace, acc_trace))


def write_program(path, instrs: list[Instr], meta: dict) -> str:
    payload = b"".join(i.pack() for i in instrs)
    container.write(path, MAGIC, VERSION, dict(meta, instructions=len(instrs)), payload)
    return container.sha256(payload)


def prefill_block(meta: dict) -> int:
    """The prefill block T a program was compiled for (metadata ``engine.prefill_block``; 1 when it has none)."""
    return int(meta.get("engine", {}).get("prefill_block", 1))


def read_program(path) -> tuple[dict, list[Instr], bytes]:
    meta, payload = container.read(path, MAGIC, VERSION, "engine program")
    if len(payload) % RECORD.size:
        raise ValueError(f"{path}: program payload of {len(payload)} bytes is not a whole number of {RECORD.size}-byte instructions")
    instrs = []
    for off in range(0, len(payload), RECORD.size):
        op, mode, layer, *args = RECORD.unpack_from(payload, off)
        if op >= len(OP_NAMES):
            raise ValueError(f"{path}: instruction {off // RECORD.size} has unknown opcode {op}")
        instrs.append(Instr(op, mode, layer, tuple(args)))
    if not instrs or instrs[-1].op != OP_END:
        raise ValueError(f"{path}: program does not end with END")
    return meta, instrs, payload


def check_pair(prog_meta: dict, blob_sha: str, prog_path="program", blob_path="blob") -> None:
    """Refuse a program compiled for another blob."""
    if prog_meta.get("blob_sha256") != blob_sha:
        raise ValueError(f"{prog_path} was compiled for a different weight blob than {blob_path} "
                         f"(sha256 {str(prog_meta.get('blob_sha256'))[:12]}… vs {blob_sha[:12]}…); recompile")


PROGRAM_FILE, BLOB_FILE = "program.bin", "weights.blob"


def read_compiled(build_dir) -> tuple[dict, list[Instr], bytes, dict, bytes]:
    """A compiled build's program and weight blob, each read by its format reader (magic, version, payload
    sha256), paired, and checked whole (metadata included) against the build's ``files.sha256``:
    ``(program meta, instructions, program payload, blob meta, blob payload)``."""
    from pathlib import Path

    from accllm.hls import blob as blobfmt
    from accllm.quant.integrity import verify

    d = Path(build_dir)
    meta, instrs, program = read_program(d / PROGRAM_FILE)
    bmeta, payload = blobfmt.read_blob(d / BLOB_FILE)
    check_pair(meta, container.sha256(payload), d / PROGRAM_FILE, d / BLOB_FILE)
    verify(d, (PROGRAM_FILE, BLOB_FILE))
    return meta, instrs, program, bmeta, payload
