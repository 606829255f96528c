"""cocotb testbench of the engine (hw/rtl/accllm_engine.sv), run through accllm.hw.engine_runner.

Control goes through cocotbext-axi's ``AxiLiteMaster`` on ``s_axil`` or, as the HLS kernel drives it, its
``AxiStreamSource`` on the command stream ``s_axis_cmd`` (register map and beat encoding: accllm.sim.engine_regs;
the test ``cmd_stream`` runs every operation both ways). Each channel's AXI4 read port is served by
:class:`ChannelMemories`, a pipelined read-only memory model: an accepted burst's first beat is ready ``latency``
cycles after its address handshake, bursts overlap (as many in flight as the engine issues), ARREADY and RVALID
drop at random (``ar_stall``, ``r_stall``), at most ``rate`` full-width beats per cycle per channel (a token
bucket: the channel's bandwidth at the kernel clock), and the AXI4 read rules the engine must keep are checked on
every request (INCR, full-width size, no 4 KiB crossing, inside the section). cocotbext-axi's ``AxiRam`` serves one burst at a time and has no latency setting, so it cannot model
the overlapped long-latency reads a pseudo-channel has; it is not used here.

Every output beat is compared as integers with the golden beats of the job (accumulators and fp16 scales per core,
tlast); per-operation mismatch counts and cycle counts go to the JSON report (``ACCLLM_ENGINE_REPORT``).
"""
from __future__ import annotations

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamFrame, AxiStreamSource

from accllm.hw.engine_runner import load_job
from accllm.sim import engine_regs as er

REG_CTRL, REG_MODE, REG_K, REG_CYCLES, REG_INFO, REG_NT, REG_T = er.CTRL, er.MODE, er.K, er.CYCLES, er.INFO, er.NT, er.T
CH_FIELDS = (er.BASE_LO, er.BASE_HI, er.ROWS, er.WORDS_READ)


def reg_ch(ch: int, field: int) -> int:
    return er.ch_reg(ch, CH_FIELDS[field])  # field 0 BASE_LO, 1 BASE_HI, 2 ROWS, 3 WORDS_READ


class ChannelMemories:
    """AXI4 read slaves of every channel, driven on the engine's flat per-channel port vectors."""

    def __init__(self, dut, channels: int, width: int, latency: int, ar_stall: float, r_stall: float, rng,
                 rate: float = 1.0):
        self.dut, self.n, self.w, self.wbytes = dut, channels, width, width // 8
        self.latency, self.ar_stall, self.r_stall, self.rng = latency, ar_stall, r_stall, rng
        self.rate = rate  # peak beats per cycle per channel (memory bandwidth / (word bytes x kernel clock))
        self.credit = [1.0] * channels
        self.mem = [dict() for _ in range(channels)]  # word address -> word
        self.regions = [[] for _ in range(channels)]
        self.errors: list[str] = []
        self.beats = [0] * channels
        self.bursts = [0] * channels
        self.max_outstanding = [0] * channels
        self.clear()

    def clear(self):
        self.queue = [[] for _ in range(self.n)]  # [ready_cycle, next word addr, beats left]
        self.ar_ready = 0
        self.r_valid = 0
        self.r_beat = [None] * self.n

    def load(self, ch: int, base: int, data: bytes, keep: bool = False):
        """Place a section; ``keep`` leaves the earlier ones (a queued operation's section beside a running one)."""
        words = {base + i: int.from_bytes(data[i: i + self.wbytes], "little") for i in range(0, len(data), self.wbytes)}
        if keep:
            self.mem[ch].update(words)
            self.regions[ch].append((base, base + len(data)))
        else:
            self.mem[ch] = words
            self.regions[ch] = [(base, base + len(data))]

    def _check(self, ch, addr, length, size, burst):
        nbytes = length * self.wbytes
        base, end = next(((b, e) for b, e in self.regions[ch] if b <= addr < e), self.regions[ch][-1])
        if burst != 1:
            self.errors.append(f"ch{ch}: ARBURST {burst}, expected INCR (1)")
        if (1 << size) != self.wbytes:
            self.errors.append(f"ch{ch}: ARSIZE {size} is not the full width of {self.wbytes} bytes")
        if addr % self.wbytes:
            self.errors.append(f"ch{ch}: ARADDR {addr:#x} not word aligned")
        if (addr & 0xFFF) + nbytes > 0x1000:
            self.errors.append(f"ch{ch}: burst {addr:#x} + {nbytes} bytes crosses a 4 KiB boundary")
        if addr < base or addr + nbytes > end:
            self.errors.append(f"ch{ch}: burst {addr:#x}..{addr + nbytes:#x} outside the section {base:#x}..{end:#x}")

    async def run(self):
        dut, cycle = self.dut, 0
        while True:
            await RisingEdge(dut.clk)
            cycle += 1
            if not int(dut.rst_n.value):
                self.clear()
                dut.m_axi_arready.value = 0
                dut.m_axi_rvalid.value = 0
                continue
            arvalid = int(dut.m_axi_arvalid.value)
            rready = int(dut.m_axi_rready.value)
            fire_ar = arvalid & self.ar_ready
            if fire_ar:
                araddr, arlen = int(dut.m_axi_araddr.value), int(dut.m_axi_arlen.value)
                arsize, arburst = int(dut.m_axi_arsize.value), int(dut.m_axi_arburst.value)
            for ch in range(self.n):
                if (fire_ar >> ch) & 1:
                    addr = (araddr >> (64 * ch)) & ((1 << 64) - 1)
                    length = ((arlen >> (8 * ch)) & 0xFF) + 1
                    self._check(ch, addr, length, (arsize >> (3 * ch)) & 7, (arburst >> (2 * ch)) & 3)
                    self.queue[ch].append([cycle + self.latency, addr, length])
                    self.bursts[ch] += 1
                    self.max_outstanding[ch] = max(self.max_outstanding[ch], len(self.queue[ch]))
                if (self.r_valid >> ch) & 1 and (rready >> ch) & 1:
                    head = self.queue[ch][0]
                    head[1] += self.wbytes
                    head[2] -= 1
                    self.beats[ch] += 1
                    self.credit[ch] -= 1.0
                    if head[2] == 0:
                        self.queue[ch].pop(0)
                    self.r_valid &= ~(1 << ch)
            # next cycle's drives
            ar_ready = r_valid = rdata = rlast = 0
            for ch in range(self.n):
                if self.rng.random() >= self.ar_stall:
                    ar_ready |= 1 << ch
                self.credit[ch] = min(self.credit[ch] + self.rate, 2.0)  # token bucket: the channel bandwidth
                q = self.queue[ch]
                held = (self.r_valid >> ch) & 1  # an offered beat stays until taken (AXI4)
                if q and q[0][0] <= cycle and (held or (self.credit[ch] >= 1.0 and self.rng.random() >= self.r_stall)):
                    r_valid |= 1 << ch
                    rdata |= self.mem[ch].get(q[0][1], 0) << (self.w * ch)
                    rlast |= (q[0][2] == 1) << ch
            self.ar_ready, self.r_valid = ar_ready, r_valid
            dut.m_axi_arready.value = ar_ready
            dut.m_axi_rvalid.value = r_valid
            dut.m_axi_rdata.value = rdata
            dut.m_axi_rlast.value = rlast


class OutputSinks:
    """Every channel's result stream, with random back-pressure."""

    def __init__(self, dut, channels: int, width: int, backpressure: float, rng):
        self.dut, self.n, self.w, self.bp, self.rng = dut, channels, width, backpressure, rng
        self.ready = 0
        self.beats = [[] for _ in range(channels)]
        self.lasts = [[] for _ in range(channels)]

    def reset(self):
        self.beats = [[] for _ in range(self.n)]
        self.lasts = [[] for _ in range(self.n)]

    async def run(self):
        dut = self.dut
        mask = (1 << self.w) - 1
        while True:
            await RisingEdge(dut.clk)
            if int(dut.rst_n.value):
                fire = int(dut.m_axis_tvalid.value) & self.ready
                if fire:
                    data, last = int(dut.m_axis_tdata.value), int(dut.m_axis_tlast.value)
                    for ch in range(self.n):
                        if (fire >> ch) & 1:
                            self.beats[ch].append((data >> (self.w * ch)) & mask)
                            self.lasts[ch].append((last >> ch) & 1)
            self.ready = sum((self.rng.random() >= self.bp) << ch for ch in range(self.n))
            dut.m_axis_tready.value = self.ready


class Bench:
    def __init__(self, dut, settings: dict):
        cfg = settings["config"]
        self.dut, self.cfg, self.settings = dut, cfg, settings
        self.rng = random.Random(int(settings.get("seed", 1)))
        self.out_w = 48 * cfg["cores"]
        self.mem = ChannelMemories(dut, cfg["channels"], cfg["channel_bits"], int(settings["latency"]),
                                   float(settings["ar_stall"]), float(settings["r_stall"]), self.rng,
                                   float(settings.get("rate", 1.0)))
        self.sink = OutputSinks(dut, cfg["channels"], self.out_w, float(settings["backpressure"]), self.rng)
        self.axil = None
        self.cmd = None

    async def start(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 4, unit="ns").start())
        dut.s_axis_act_tvalid.value = 0
        dut.s_axis_act_tlast.value = 0
        dut.m_axi_arready.value = 0
        dut.m_axi_rvalid.value = 0
        dut.m_axi_rresp.value = 0
        dut.m_axi_rid.value = 0
        dut.m_axis_tready.value = 0
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst_n, reset_active_level=False)
        self.cmd = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis_cmd"), dut.clk, dut.rst_n,
                                   reset_active_level=False)
        gap = float(self.settings.get("cmd_gap", 0.0))
        if gap:
            rng = random.Random(int(self.settings.get("seed", 1)) + 17)
            self.cmd.set_pause_generator(iter(lambda: rng.random() < gap, None))
        cocotb.start_soon(self.mem.run())
        cocotb.start_soon(self.sink.run())
        await self.reset()
        # INFO / T read as a board host reads them (accllm.sim.engine_regs.read_identity)
        got = er.read_identity(await self.axil.read_dword(REG_INFO), await self.axil.read_dword(REG_T))
        want = {k: self.cfg[k] for k in er.IDENTITY}
        assert got == want, f"INFO / T registers say {got}, the job was made for {want}"

    async def reset(self, cycles: int = 4):
        self.dut.rst_n.value = 0
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst_n.value = 1
        await ClockCycles(self.dut.clk, 2)

    async def load_act(self, vectors):
        """The operation's activation vectors one after another, each ending with tlast; with random gaps."""
        dut, lanes = self.dut, self.cfg["lanes"]
        for a in vectors:
            vals = [int(x) & 0xFF for x in a] + [0] * (-len(a) % lanes)
            chunks = [int.from_bytes(bytes(vals[i: i + lanes]), "little") for i in range(0, len(vals), lanes)]
            for i, c in enumerate(chunks):
                dut.s_axis_act_tdata.value = c
                dut.s_axis_act_tlast.value = int(i == len(chunks) - 1)
                dut.s_axis_act_tvalid.value = 1
                await RisingEdge(dut.clk)
                while not int(dut.s_axis_act_tready.value):
                    await RisingEdge(dut.clk)
                if self.rng.random() < float(self.settings.get("act_gap", 0.0)):
                    dut.s_axis_act_tvalid.value = 0
                    await RisingEdge(dut.clk)
        dut.s_axis_act_tvalid.value = 0
        dut.s_axis_act_tlast.value = 0

    def place(self, op: dict, index: int, keep: bool = False, slot: int = 0) -> list[int]:
        """Put the op's sections in the channels' memories; returns their bases. ``slot`` keeps queued
        operations' sections apart."""
        wbytes, bases = self.cfg["channel_bits"] // 8, []
        for ch, sec in enumerate(op["sections"]):
            # a base somewhere in a page, so that bursts meet 4 KiB boundaries
            base = (1 << 32) * (index % 2) + 0x10000 + (slot << 24) + wbytes * self.rng.randrange(0, 4096 // wbytes)
            self.mem.load(ch, base, sec, keep)
            bases.append(base)
        return bases

    def writes(self, op: dict, bases: list[int]) -> list[tuple[int, int]]:
        return er.op_writes(op["mode"], op.get("wbits", 2), op.get("nt", 1), op["k"], bases, op["rows"])

    async def program(self, op: dict, index: int):
        """Place the sections, load the activations, write the registers over AXI4-Lite and start."""
        bases = self.place(op, index)
        await self.load_act(op["a"])
        writes = er.region_writes([0] * self.cfg["channels"]) + self.writes(op, bases)
        for addr, data in writes[:-1]:
            await self.axil.write_dword(addr, data)
        self.sink.reset()
        await self.axil.write_dword(*writes[-1])

    async def send_cmds(self, op: dict, offsets: list[int]):
        """The operation's register writes as one command-stream frame (tlast on the CTRL.start beat)."""
        beats = [er.encode_cmd(a, d) for a, d in self.writes(op, offsets)]
        await self.cmd.send(AxiStreamFrame(b"".join(b.to_bytes(er.CMD_BITS // 8, "little") for b in beats)))
        await self.cmd.wait()

    async def set_regions(self) -> list[int]:
        """As a host does once per loaded image: every channel's REGION over AXI4-Lite (random, below the
        sections), so that the kernel's BASE values are offsets in the regions."""
        wbytes = self.cfg["channel_bits"] // 8
        regions = [wbytes * self.rng.randrange(0, 0x10000 // wbytes) for _ in range(self.cfg["channels"])]
        for addr, data in er.region_writes(regions):
            await self.axil.write_dword(addr, data)
        return regions

    async def program_cmd(self, op: dict, index: int, keep: bool = False, slot: int = 0,
                          regions: list[int] | None = None) -> list[int]:
        """As the HLS kernel does: the command frame (BASE = offset in the channel's REGION) first, the
        activations after it (the engine's start waits for them). Returns the regions."""
        bases = self.place(op, index, keep, slot)
        regions = regions or await self.set_regions()
        task = cocotb.start_soon(self.send_cmds(op, [b - r for b, r in zip(bases, regions)]))
        await self.load_act(op["a"])
        await task
        return regions

    async def run_op(self, op: dict, index: int, cmd: bool = False) -> dict:
        if cmd:
            self.sink.reset()
            await self.program_cmd(op, index)
        else:
            await self.program(op, index)
        return await self.finish_op(op)

    async def finish_op(self, op: dict, offset: list[int] | None = None, followed: bool = False) -> dict:
        """Wait for the op's beats (after ``offset`` beats per channel already in the sink), read CYCLES and
        WORDS_READ over AXI4-Lite, compare with the golden beats (``followed``: another op's beats come after
        them in the sink)."""
        offset = offset or [0] * self.cfg["channels"]
        want = [len(e) + o for e, o in zip(op["expected"], offset)]
        limit = 200 + 50 * (sum(len(s) for s in op["sections"]) // (self.cfg["channel_bits"] // 8) + sum(want)) \
            + 4 * int(self.settings["latency"]) * (1 + sum(len(s) for s in op["sections"]) // 4096)
        t0 = time.perf_counter()
        for _ in range(limit):
            if all(len(b) >= w for b, w in zip(self.sink.beats, want)):
                break
            await RisingEdge(self.dut.clk)
        for _ in range(50):
            ctrl = await self.axil.read_dword(REG_CTRL)
            if ctrl & 2:
                break
        cycles = await self.axil.read_dword(REG_CYCLES)
        words = [await self.axil.read_dword(reg_ch(ch, 3)) for ch in range(self.cfg["channels"])]
        end = [o + len(e) if followed else None for o, e in zip(offset, op["expected"])]
        res = compare(op, [b[o:e] for b, o, e in zip(self.sink.beats, offset, end)],
                      [t[o:e] for t, o, e in zip(self.sink.lasts, offset, end)], self.cfg["cores"])
        res.update(name=op["name"], kind=op["kind"], k=op["k"], rows=op["rows"], wbits=op.get("wbits", 2),
                   nt=op.get("nt", 1), cycles=cycles, done=bool(ctrl & 2),
                   words_read=words, wall_seconds=time.perf_counter() - t0,
                   section_words=[len(s) // (self.cfg["channel_bits"] // 8) for s in op["sections"]])
        return res


def compare(op: dict, beats, lasts, cores: int) -> dict:
    mism = tl = 0
    first = None
    for ch, exp in enumerate(op["expected"]):
        got = beats[ch]
        for i in range(max(len(exp), len(got))):
            if i >= len(exp) or i >= len(got):
                mism += 2 * cores
                continue
            if got[i] != exp[i]:
                diff = got[i] ^ exp[i]
                lanes = sum(1 for c in range(cores) if (diff >> (32 * c)) & 0xFFFFFFFF) + \
                    sum(1 for c in range(cores) if (diff >> (32 * cores + 16 * c)) & 0xFFFF)
                mism += lanes
                if first is None:
                    first = {"channel": ch, "beat": i, "got": hex(got[i]), "expected": hex(exp[i])}
            if lasts[ch][i] != int(i == len(exp) - 1):
                tl += 1
    return {"outputs": sum(len(e) for e in op["expected"]) * cores, "mismatches": mism, "tlast_mismatches": tl,
            "first_mismatch": first}


def summarize(results: list[dict], bench: Bench, test: str) -> dict:
    by_kind = {}
    for r in results:
        k = by_kind.setdefault(r["kind"], {"ops": 0, "outputs": 0, "mismatches": 0, "tlast_mismatches": 0})
        k["ops"] += 1
        for f in ("outputs", "mismatches", "tlast_mismatches"):
            k[f] += r[f]
    mem = bench.mem
    blocks = {}
    for r in results:
        key = f"{r['kind']} w{r['wbits']} nt{r['nt']}"
        d = blocks.setdefault(key, {"ops": 0, "outputs": 0, "mismatches": 0})
        d["ops"] += 1
        d["outputs"] += r["outputs"]
        d["mismatches"] += r["mismatches"] + r["tlast_mismatches"]
    return {"test": test, "ops": results, "by_kind": by_kind, "by_width_and_block": blocks, "mismatches": sum(r["mismatches"] + r["tlast_mismatches"]
                                                                          for r in results),
            "axi_errors": mem.errors[:20], "bursts": mem.bursts, "beats": mem.beats,
            "max_outstanding_bursts": mem.max_outstanding, "settings": {k: v for k, v in bench.settings.items()}}


def _write(report: dict):
    path = os.environ.get("ACCLLM_ENGINE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)


def _check(report: dict):
    assert not report["axi_errors"], f"AXI4 rule violations: {report['axi_errors']}"
    bad = [r for r in report["ops"] if r["mismatches"] or r["tlast_mismatches"] or not r["done"]]
    assert not bad, f"{len(bad)} operations with mismatches or not done, first: {bad[0]}"


@cocotb.test()
async def run_job(dut):
    """Every operation of the job, one after another, each checked against the golden beats."""
    ops, settings = load_job(os.environ["ACCLLM_ENGINE_JOB"])
    bench = Bench(dut, settings)
    await bench.start()
    results = [await bench.run_op(op, i) for i, op in enumerate(ops)]
    report = summarize(results, bench, "run_job")
    _write(report)
    _check(report)


@cocotb.test()
async def reset_mid_stream(dut):
    """Start each operation, reset the engine (and the memory and AXI-Lite models) after a random number of
    cycles, with reads in flight and results pending; then every operation must still come out exact."""
    ops, settings = load_job(os.environ["ACCLLM_ENGINE_JOB"])
    bench = Bench(dut, settings)
    await bench.start()
    resets = []
    for i, op in enumerate(ops):
        await bench.program(op, i)
        wait = bench.rng.randrange(1, 3 * int(settings["latency"]) + 40)
        await ClockCycles(dut.clk, wait)
        resets.append({"name": op["name"], "reset_after": wait, "beats_before_reset": [len(b) for b in bench.sink.beats]})
        await bench.reset(bench.rng.randrange(1, 6))
    results = [await bench.run_op(op, i) for i, op in enumerate(ops)]
    report = summarize(results, bench, "reset_mid_stream")
    report["resets"] = resets
    _write(report)
    _check(report)


@cocotb.test()
async def cmd_stream(dut):
    """Every operation twice, over AXI4-Lite and over the command stream (commands sent before the activations):
    both give the golden beats, hence each other's; then the operations in pairs, the second one's commands and
    activations queued while the first runs (the stream waits until the engine is idle)."""
    ops, settings = load_job(os.environ["ACCLLM_ENGINE_JOB"])
    bench = Bench(dut, settings)
    await bench.start()
    results, same = [], 0
    for i, op in enumerate(ops):
        lite = await bench.run_op(op, i)
        lite_beats = [list(b) for b in bench.sink.beats]
        res = await bench.run_op(op, i, cmd=True)
        res["path"] = "stream"
        same += lite_beats == bench.sink.beats
        results += [lite, res]
    for i in range(0, len(ops) - 1, 2):
        a, b = ops[i], ops[i + 1]
        bench.sink.reset()
        regions = await bench.program_cmd(a, i)
        # returns once b's start is taken, which is after a is done
        await bench.program_cmd(b, i + 1, keep=True, slot=1, regions=regions)
        rb = await bench.finish_op(b, offset=[len(e) for e in a["expected"]])
        ra = await bench.finish_op(a, followed=True)  # its beats came first; CYCLES and WORDS_READ now say b's
        ra.update(cycles=None, words_read=None)
        ra["path"] = rb["path"] = "queued"
        results += [ra, rb]
    report = summarize(results, bench, "cmd_stream")
    report["lite_equals_stream"] = f"{same}/{len(ops)}"
    _write(report)
    _check(report)
    assert same == len(ops), f"AXI4-Lite and command-stream results differ on {len(ops) - same} of {len(ops)} ops"
