"""The engine's register map and command encoding: the one definition shared by the RTL's comment block
(``hw/rtl/accllm_engine.sv``), its testbenches and drivers (imported), and the HLS kernel and the Verilated
harness (the C header :func:`c_header` writes).

Registers are 32-bit at byte addresses; the host or debugger reaches them over AXI4-Lite (``s_axil``), the HLS
control kernel over the command stream (``s_axis_cmd``): one 64-bit beat per register write,
``tdata[11:0]`` the address, ``tdata[31:12]`` zero, ``tdata[63:32]`` the value; ``tlast`` on the last beat of an
operation (its CTRL.start write). Both feed the same register-write logic. The stream is accepted only while the
engine is idle, so a kernel may queue the next operation's beats at any time; a CTRL.start beat further waits until
the operation's activation vectors (NT for DENSE/SPARSE, else 1) have arrived on ``s_axis_act``, so beats that
reach the engine through separately buffered links cannot start it early. The HLS kernel sends an operation's
activations first, then its commands, so no beat it writes waits on one it writes later (no deadlock on an
unbuffered link). An AXI4-Lite write takes the register port first when both come in one
cycle. Completion: each channel's result stream ends the operation with ``tlast`` (a channel with no rows sends
no beat); the kernel counts beats.
"""
from __future__ import annotations

# ---------------------------------------------------------------- registers (byte addresses)
CTRL = 0x000        # W: bit0 start. R: bit0 busy, bit1 done (set when every channel finished, cleared by start)
MODE = 0x004        # the program's mode byte: [1:0] mode (0 dense, 1 2:4 sparse, 2 QK, 3 PV), [7:4] code width
K = 0x008           # inputs per row
CYCLES = 0x00C      # R: clock cycles from start to done
INFO = 0x010        # R: [7:0] CHANNELS, [15:8] CORES, [23:16] LANES, [27:24] WBITS, [31:28] log2(W / 128)
GROUP = 0x014       # R
K_MAX = 0x018       # R
NT = 0x01C          # activation vectors of the operation, 1..T (0 reads as 1; DENSE/SPARSE only)
T = 0x020           # R: vectors the activation RAM holds
CH_BASE = 0x100     # per channel ch: CH_BASE + CH_STRIDE * ch + field
CH_STRIDE = 16
BASE_LO, BASE_HI, ROWS, WORDS_READ = 0, 4, 8, 12   # fields of a channel's block (WORDS_READ: R)
# Per channel ch: REGION_BASE + REGION_STRIDE * ch + REGION_LO / REGION_HI, the byte address of the channel's region
# (reset 0). The channel reads at REGION + BASE: the host sets REGION where it loaded the channel's part of the
# engine image; the kernel's BASE is the section's offset in that region (the compiled section table).
REGION_BASE, REGION_STRIDE, REGION_LO, REGION_HI = 0x800, 8, 0, 4
MAX_CHANNELS = (REGION_BASE - CH_BASE) // CH_STRIDE  # the channel blocks end below the regions

CTRL_START, CTRL_BUSY, CTRL_DONE = 1, 1, 2
ADDR_BITS = 12

REGISTERS = {"CTRL": CTRL, "MODE": MODE, "K": K, "CYCLES": CYCLES, "INFO": INFO, "GROUP": GROUP, "K_MAX": K_MAX,
             "NT": NT, "T": T}
CH_FIELDS = {"BASE_LO": BASE_LO, "BASE_HI": BASE_HI, "ROWS": ROWS, "WORDS_READ": WORDS_READ}

# ---------------------------------------------------------------- command stream
CMD_BITS = 64
CMD_DATA_LSB = 32


def ch_reg(ch: int, field: int) -> int:
    """Byte address of ``field`` (BASE_LO / BASE_HI / ROWS / WORDS_READ) of channel ``ch``."""
    return CH_BASE + CH_STRIDE * ch + field


def region_reg(ch: int, field: int = REGION_LO) -> int:
    """Byte address of channel ``ch``'s REGION_LO (or REGION_HI)."""
    return REGION_BASE + REGION_STRIDE * ch + field


def region_writes(regions: list[int]) -> list[tuple[int, int]]:
    """The host's writes placing every channel's region (once per loaded engine image)."""
    return [w for ch, r in enumerate(regions)
            for w in ((region_reg(ch), r & 0xFFFFFFFF), (region_reg(ch, REGION_HI), r >> 32))]


WBITS = (2, 4)  # weight code widths of DENSE / SPARSE operations (accllm.sim.weight_stream.WEIGHT_BITS)


def mode_byte(mode: int, wbits: int = 2) -> int:
    """The program's mode byte, which is also the MODE register value: the core mode (0 dense, 1 2:4 sparse, 2 QK,
    3 PV) in the low nibble, the weight code width above."""
    if not 0 <= mode < 4 or wbits not in WBITS:
        raise ValueError(f"mode {mode} / weight code width {wbits} do not fit the mode byte (wbits in {WBITS})")
    return mode | wbits << 4


def split_mode(byte: int) -> tuple[int, int]:
    """Inverse of :func:`mode_byte`: ``(mode, wbits)``."""
    return byte & 15, byte >> 4


def encode_cmd(addr: int, data: int) -> int:
    """One command beat's tdata: a register write."""
    if not 0 <= addr < 1 << ADDR_BITS or addr % 4:
        raise ValueError(f"register address {addr:#x} is not a 32-bit register of the engine")
    return (addr & ((1 << ADDR_BITS) - 1)) | (data & 0xFFFFFFFF) << CMD_DATA_LSB


def decode_cmd(beat: int) -> tuple[int, int]:
    return beat & ((1 << ADDR_BITS) - 1), (beat >> CMD_DATA_LSB) & 0xFFFFFFFF


def op_writes(mode: int, wbits: int, nt: int, k: int, bases: list[int], rows: list[int]) -> list[tuple[int, int]]:
    """The register writes of one operation, CTRL.start last: MODE, NT, K, then per channel BASE_LO, BASE_HI,
    ROWS. The command stream sends them as beats (tlast on the last); a host writes them over AXI4-Lite."""
    w = [(MODE, mode_byte(mode, wbits)), (NT, nt), (K, k)]
    for ch, (b, r) in enumerate(zip(bases, rows)):
        w += [(ch_reg(ch, BASE_LO), b & 0xFFFFFFFF), (ch_reg(ch, BASE_HI), b >> 32), (ch_reg(ch, ROWS), r)]
    return w + [(CTRL, CTRL_START)]


def op_commands(mode: int, wbits: int, nt: int, k: int, bases: list[int], rows: list[int]) -> list[tuple[int, bool]]:
    """The command beats of one operation: ``(tdata, tlast)``."""
    w = op_writes(mode, wbits, nt, k, bases, rows)
    return [(encode_cmd(a, d), i == len(w) - 1) for i, (a, d) in enumerate(w)]


# ---------------------------------------------------------------- the engine a build needs, and what INFO / T say

def engine_params(blob_map: dict, block: int = 1) -> dict:
    """Verilog parameters of the engine that reads an image with this map (``blob_map.json``), ``block`` (T)
    vectors per weight pass; it decodes 2- and 4-bit codes (WBITS 4), each operation saying its own."""
    f = blob_map["format"]
    k_max = max(s["k"] for s in blob_map["sections"])
    k_max = -(-k_max // (2 * f["lanes"])) * 2 * f["lanes"]
    return {"CHANNELS": blob_map["channels"], "CORES": f["cores"], "LANES": f["lanes"], "GROUP": f["group"],
            "WBITS": 4, "W": f["channel_bits"], "K_MAX": k_max, "T": int(block)}


# What a host can read of an engine (INFO and T) and must match the build's image: field -> Verilog parameter
IDENTITY = {"channels": "CHANNELS", "cores": "CORES", "lanes": "LANES", "wbits": "WBITS", "channel_bits": "W",
            "block": "T"}


def identity(params: dict) -> dict:
    """The :data:`IDENTITY` fields of an engine with Verilog parameters ``params``."""
    return {k: int(params[v]) for k, v in IDENTITY.items()}


def info_value(params: dict) -> int:
    """The INFO register of an engine with Verilog parameters ``params``."""
    return (int(params["CHANNELS"]) | int(params["CORES"]) << 8 | int(params["LANES"]) << 16
            | int(params["WBITS"]) << 24 | (int(params["W"]) // 128).bit_length() - 1 << 28)


def read_identity(info: int, t: int) -> dict:
    """:func:`identity` as an engine reports it: its INFO and T registers."""
    return {"channels": info & 0xFF, "cores": info >> 8 & 0xFF, "lanes": info >> 16 & 0xFF, "wbits": info >> 24 & 0xF,
            "channel_bits": 128 << (info >> 28 & 0xF), "block": int(t)}


def c_header() -> str:
    """``accllm_engine_regs.h``: the same map and encoding for the HLS kernel and the Verilated harness."""
    regs = "\n".join(f"static const unsigned ENG_REG_{n} = 0x{a:03X};" for n, a in REGISTERS.items())
    fields = "\n".join(f"static const unsigned ENG_CH_{n} = {v};" for n, v in CH_FIELDS.items())
    return f"""// Generated from accllm.sim.engine_regs (the one definition of the engine's registers and command
// stream); do not edit. A command beat is one register write: tdata[{ADDR_BITS - 1}:0] address, tdata[63:32] value,
// tlast on an operation's last beat (CTRL.start). See the module's docstring for the stream rules.
#ifndef ACCLLM_ENGINE_REGS_H
#define ACCLLM_ENGINE_REGS_H
#include <cstdint>
namespace accllm_engine_regs {{
{regs}
static const unsigned ENG_CH_BASE = 0x{CH_BASE:03X};
static const unsigned ENG_CH_STRIDE = {CH_STRIDE};
{fields}
static const unsigned ENG_REGION_BASE = 0x{REGION_BASE:03X};
static const unsigned ENG_REGION_STRIDE = {REGION_STRIDE};
static const unsigned ENG_REGION_LO = {REGION_LO};
static const unsigned ENG_REGION_HI = {REGION_HI};
static const unsigned ENG_CTRL_START = {CTRL_START};
static const unsigned ENG_CTRL_BUSY = {CTRL_BUSY};
static const unsigned ENG_CTRL_DONE = {CTRL_DONE};
static const unsigned ENG_CMD_BITS = {CMD_BITS};
static const unsigned ENG_CMD_DATA_LSB = {CMD_DATA_LSB};
static const unsigned ENG_ADDR_BITS = {ADDR_BITS};
inline unsigned eng_ch_reg(unsigned ch, unsigned field) {{ return ENG_CH_BASE + ENG_CH_STRIDE * ch + field; }}
inline unsigned eng_region_reg(unsigned ch, unsigned field) {{ return ENG_REGION_BASE + ENG_REGION_STRIDE * ch + field; }}
inline unsigned eng_mode_byte(unsigned mode, unsigned wbits) {{ return (mode & 3u) | (wbits & 15u) << 4; }}
inline uint64_t eng_cmd(unsigned addr, uint32_t data) {{
    return (uint64_t)(addr & ((1u << ENG_ADDR_BITS) - 1)) | (uint64_t)data << ENG_CMD_DATA_LSB;
}}
inline unsigned eng_cmd_addr(uint64_t beat) {{ return (unsigned)(beat & ((1u << ENG_ADDR_BITS) - 1)); }}
inline uint32_t eng_cmd_data(uint64_t beat) {{ return (uint32_t)(beat >> ENG_CMD_DATA_LSB); }}
// Beats of one operation (op_writes): MODE, NT, K, per channel BASE_LO, BASE_HI, ROWS, then CTRL.start.
inline unsigned eng_op_beats(unsigned channels) {{ return 4 + 3 * channels; }}
}}  // namespace accllm_engine_regs
#endif
"""
