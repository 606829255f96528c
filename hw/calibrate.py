"""Measurements the perf model's core timing is fitted on (``accllm.sim.perf_fit``): random operations on the
Verilated core wrapper, and every core call of a compiled engine in C/RTL co-simulation."""
from __future__ import annotations

from accllm.sim.perf import op_shape
from accllm.sim.perf_fit import core_stream_of, make_op


def measure_rtl(lanes: int, group: int, shapes: list[tuple[str, dict]], seed: int = 0) -> list[dict]:
    """Run random operations of ``shapes`` on the Verilated core wrapper (``accllm.hw.rtl_native``; outputs
    checked against the golden core); one sample per call with its measured cycles and the model's beats and
    packets."""
    import numpy as np

    from accllm.hw.rtl_native import RtlCore

    rng = np.random.default_rng(seed)
    core = RtlCore(lanes, group)
    samples = []
    for kind, dims in shapes:
        stream, gold = core_stream_of(make_op(kind, dims, group, rng), lanes)
        out, rec = core.run(stream)
        bad = int((out != gold.numpy().reshape(-1)).sum())
        if bad:
            raise RuntimeError(f"the RTL core disagrees with the golden core on {bad} outputs of {kind} {dims}")
        beats, packets = op_shape(kind, lanes, **dims)
        if (beats, packets) != (rec["beats"], rec["packets"]):
            raise AssertionError(f"{kind} {dims}: the model counts {beats} beats / {packets} packets, the core "
                                 f"consumed {rec['beats']} / {rec['packets']}")
        samples.append({"lanes": lanes, "group": group, "kind": kind, "dims": dims, "beats": beats,
                        "packets": packets, "cycles": rec["cycles"]})
    return samples


def measure_engine(build, prompt_ids: list[int]) -> list[dict]:
    """Every core call the compiled engine makes for ``prompt_ids`` with the RTL core linked in (C/RTL
    co-simulation), as samples: the real shapes of a model, measured inside the kernel."""
    from accllm.hw import rtl_native
    from accllm.sim.golden_core import MODE_NAMES

    sim = rtl_native.rtl_csim(build)
    rtl_native.start_log(sim.lib)
    errors = rtl_native.load_stats(sim.lib)["protocol_errors"]
    for t in prompt_ids:
        sim.step(t)
    log = rtl_native.read_log(sim.lib)
    if rtl_native.load_stats(sim.lib)["protocol_errors"] != errors:
        raise RuntimeError("the RTL core broke the blackbox protocol during the engine run")
    lanes = sim.meta["engine"]["lanes"]
    return [{"lanes": lanes, "group": sim.meta["dims"]["group"], "kind": MODE_NAMES[r["mode"]],
             "dims": {"call": i}, "beats": r["beats"], "packets": r["packets"], "cycles": r["cycles"]}
            for i, r in enumerate(log)]
