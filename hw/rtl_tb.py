"""cocotb testbench of the integer core (hw/rtl/accllm_core.sv), run through accllm.hw.rtl_runner.

Every operation of a job is packed into beats with accllm.sim.core_stream, driven into the core with random
input gaps and random output back-pressure (probabilities from the job), and every output word and tlast is
compared with accllm.sim.golden_core. Mismatch counts per operation are logged, written to the JSON report
(``ACCLLM_RTL_REPORT``) and asserted to be zero at the end of each test.

The stream drivers are plain cocotb: operands arrive as integers already packed by core_stream, and one
coroutine per stream reads tready and writes tdata once per cycle (faster than byte-wise frame drivers).
"""
from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from accllm.sim import core_stream as cs
from accllm.sim import golden_core as gc
from accllm.hw.rtl_runner import load_job

KIND_MODE = {"dense": gc.MODE_DENSE, "sparse": gc.MODE_SPARSE, "qk": gc.MODE_QK, "pv": gc.MODE_PV}
QUIET_CYCLES = 8  # cycles without output required after an operation (no stray accumulators)


def prepare(op: dict, lanes: int):
    """-> (CoreStream, expected accumulators (flat int64), expected tlast flags, useful MACs)."""
    kind = op["kind"]
    if kind == "dense":
        stream = cs.dense_stream(op["a"], op["codes"], op["zeros"], op["group"], lanes)
        gold = gc.dense_w2a8(op["a"], op["codes"], op["zeros"], op["group"])
        macs = op["codes"].size
    elif kind == "sparse":
        stream = cs.sparse_stream(op["a"], op["vals"], op["pos"], op["zeros"], op["group"], lanes)
        gold = gc.sparse_w2a8(op["a"], op["vals"], op["pos"], op["zeros"], op["group"])
        macs = op["vals"].size
    elif kind == "qk":
        stream = cs.qk_stream(op["q"], op["k"], op["kz"], lanes)
        gold = gc.qk_a8kv4(op["q"], op["k"], op["kz"])
        macs = op["k"].size
    else:
        stream = cs.pv_stream(op["p"], op["v"], op["vz"], lanes)
        gold = gc.pv_a8kv4(op["p"], op["v"], op["vz"])
        macs = op["v"].size
    last = np.zeros((stream.packets, stream.outputs_per_packet), bool)
    last[:, -1] = True
    return stream, gold.numpy().reshape(-1), last.reshape(-1), int(macs)


async def drive(clk, valid, ready, data, words, last=None, lasts=None, gap_p=0.0, rng=None):
    """AXI4-Stream source: present words[i] until accepted; idle a cycle with probability gap_p."""
    i, n, presenting = 0, len(words), False
    valid.value = 0
    while i < n or presenting:
        await RisingEdge(clk)
        if presenting:
            if int(ready.value):
                i += 1
                presenting = False
            else:
                continue  # hold tvalid and tdata until the handshake
        if i < n and (gap_p == 0.0 or rng.random() >= gap_p):
            data.value = words[i]
            if last is not None:
                last.value = int(lasts[i])
            valid.value = 1
            presenting = True
        else:
            valid.value = 0
    valid.value = 0


async def collect(dut, n: int, bp_p: float, rng, limit: int):
    """AXI4-Stream sink: gather n (tdata, tlast); deassert tready with probability bp_p.
    Returns (words, lasts, cycles until the last output or the limit)."""
    words, lasts, cycles, ready = [], [], 0, False
    while len(words) < n and cycles < limit:
        await RisingEdge(dut.clk)
        cycles += 1
        if ready and int(dut.m_tvalid.value):
            words.append(int(dut.m_tdata.value))
            lasts.append(int(dut.m_tlast.value))
        ready = bp_p == 0.0 or rng.random() >= bp_p
        dut.m_tready.value = int(ready)
    dut.m_tready.value = 0
    return words, lasts, cycles


async def quiet(dut, cycles: int) -> int:
    """Count cycles in which the core offers an output although none is expected."""
    stray = 0
    for _ in range(cycles):
        await RisingEdge(dut.clk)
        stray += int(dut.m_tvalid.value)
    return stray


async def set_mode(dut, mode: int):
    dut.cfg_mode.value = mode
    dut.cfg_we.value = 1
    await RisingEdge(dut.clk)
    dut.cfg_we.value = 0
    await RisingEdge(dut.clk)
    assert int(dut.mode.value) == mode, f"mode register reads {int(dut.mode.value)} after writing {mode}"


async def start(dut):
    Clock(dut.clk, 4, unit="ns").start()  # 250 MHz nominal; only cycle counts matter
    for sig in (dut.s_a_tvalid, dut.s_b_tvalid, dut.s_b_tlast, dut.m_tready, dut.cfg_we, dut.cfg_mode):
        sig.value = 0
    dut.s_a_tdata.value = 0
    dut.s_b_tdata.value = 0
    await reset(dut)


async def reset(dut, cycles: int = 2):
    dut.rst_n.value = 0
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst_n.value = 1
    await RisingEdge(dut.clk)


def compare(gold, last_exp, words, lasts) -> dict:
    got = cs.unpack_out(words)
    n = min(len(got), len(gold))
    value_mm = int((got[:n] != gold[:n]).sum()) + abs(len(gold) - len(got))
    last_mm = int((np.asarray(lasts[:n], bool) != last_exp[:n]).sum())
    first = None
    if value_mm:
        bad = np.flatnonzero(got[:n] != gold[:n])
        first = {"index": int(bad[0]), "got": int(got[bad[0]]), "expected": int(gold[bad[0]])} if bad.size else None
    return {"outputs": int(len(gold)), "received": int(len(got)), "mismatches": value_mm,
            "tlast_mismatches": last_mm, "first_mismatch": first}


async def run_op(dut, op: dict, lanes: int, settings: dict, index: int) -> dict:
    stream, gold, last_exp, macs = prepare(op, lanes)
    seed = int(settings.get("seed", 1)) * 1000003 + index
    gaps, bp = float(settings.get("gaps", 0.0)), float(settings.get("backpressure", 0.0))
    await set_mode(dut, stream.mode)
    t0 = time.perf_counter()
    a_task = cocotb.start_soon(drive(dut.clk, dut.s_a_tvalid, dut.s_a_tready, dut.s_a_tdata, stream.a,
                                     gap_p=gaps, rng=random.Random(seed + 1)))
    b_task = cocotb.start_soon(drive(dut.clk, dut.s_b_tvalid, dut.s_b_tready, dut.s_b_tdata, stream.b,
                                     dut.s_b_tlast, stream.b_last, gap_p=gaps, rng=random.Random(seed + 2)))
    limit = 20 * (stream.beats + len(gold)) + 200
    words, lasts, cycles = await collect(dut, len(gold), bp, random.Random(seed + 3), limit)
    wall = time.perf_counter() - t0
    a_task.cancel()
    b_task.cancel()
    dut.s_a_tvalid.value = 0
    dut.s_b_tvalid.value = 0
    stray = await quiet(dut, QUIET_CYCLES)
    res = compare(gold, last_exp, words, lasts)
    res["mismatches"] += stray
    res.update(name=op.get("name", f"op{index}"), kind=op["kind"], beats=stream.beats, cycles=cycles,
               useful_macs=macs, utilization=macs / (lanes * cycles) if cycles else 0.0, wall_s=wall,
               stray_outputs=stray)
    dut._log.info("%-28s %-6s %6d outputs %7d beats %7d cycles  util %.3f  mismatches %d  tlast mismatches %d",
                  res["name"], res["kind"], res["outputs"], res["beats"], cycles, res["utilization"],
                  res["mismatches"], res["tlast_mismatches"])
    return res


def write_report(results: list[dict], lanes: int, group: int, test: str) -> dict:
    by_kind = {}
    for r in results:
        k = by_kind.setdefault(r["kind"], {"ops": 0, "outputs": 0, "mismatches": 0, "tlast_mismatches": 0})
        k["ops"] += 1
        for key in ("outputs", "mismatches", "tlast_mismatches"):
            k[key] += r[key]
    total_cycles = sum(r["cycles"] for r in results)
    total_wall = sum(r["wall_s"] for r in results)
    report = {"test": test, "lanes": lanes, "group": group, "ops": results, "by_kind": by_kind,
              "mismatches": sum(r["mismatches"] + r["tlast_mismatches"] for r in results),
              "outputs": sum(r["outputs"] for r in results),
              "cycles": total_cycles, "sim_cycles_per_s": total_cycles / total_wall if total_wall else 0.0}
    path = os.environ.get("ACCLLM_RTL_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return report


def _job():
    ops, settings = load_job(os.environ["ACCLLM_RTL_JOB"])
    return ops, settings, int(os.environ["ACCLLM_RTL_LANES"]), int(os.environ["ACCLLM_RTL_GROUP"])


def _check_params(dut, lanes: int):
    width = len(dut.s_b_tdata)
    assert width == cs.b_width(lanes), f"core built with a {width}-bit B stream, job expects LANES={lanes}"


@cocotb.test()
async def run_job(dut):
    """Every operation of the job, back to back, each checked bit-exactly against the golden core."""
    ops, settings, lanes, group = _job()
    _check_params(dut, lanes)
    await start(dut)
    results = [await run_op(dut, op, lanes, settings, i) for i, op in enumerate(ops)]
    report = write_report(results, lanes, group, "run_job")
    for kind, k in report["by_kind"].items():
        dut._log.info("%s: %d outputs, %d mismatches, %d tlast mismatches", kind, k["outputs"], k["mismatches"],
                      k["tlast_mismatches"])
    assert report["mismatches"] == 0, f"{report['mismatches']} outputs differ from the golden core"


@cocotb.test()
async def reset_mid_stream(dut):
    """Reset while each operation is half streamed, then run it again: nothing stale may come out."""
    ops, settings, lanes, group = _job()
    _check_params(dut, lanes)
    await start(dut)
    rng = random.Random(int(settings.get("seed", 1)))
    results = []
    for i, op in enumerate(ops):
        stream, gold, _, _ = prepare(op, lanes)
        await set_mode(dut, stream.mode)
        a_task = cocotb.start_soon(drive(dut.clk, dut.s_a_tvalid, dut.s_a_tready, dut.s_a_tdata, stream.a))
        b_task = cocotb.start_soon(drive(dut.clk, dut.s_b_tvalid, dut.s_b_tready, dut.s_b_tdata, stream.b,
                                         dut.s_b_tlast, stream.b_last))
        cut = rng.randint(2, max(3, stream.beats // 2))
        partial, _, _ = await collect(dut, len(gold), 0.5, rng, cut)  # some outputs, some still in flight
        a_task.cancel()
        b_task.cancel()
        dut.s_a_tvalid.value = 0
        dut.s_b_tvalid.value = 0
        await reset(dut)
        assert int(dut.mode.value) == gc.MODE_DENSE, "reset must return the mode register to DENSE"
        dut._log.info("%s: reset after %d cycles (%d of %d outputs received)", op.get("name"), cut, len(partial), len(gold))
        results.append(await run_op(dut, op, lanes, settings, i))
    report = write_report(results, lanes, group, "reset_mid_stream")
    assert report["mismatches"] == 0, f"{report['mismatches']} outputs differ from the golden core after a reset"
