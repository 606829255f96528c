"""`accllm build` killed (SIGKILL) at points inside each step, then run again: every step's files equal those of a
clean build, or the step ran again — a half-written artifact is never skipped. A step writes into a temporary
folder renamed into place; a step is skipped only when every recorded file still has its sha256."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from accllm.host.flow import build
from accllm.host.flow_config import DEFAULT_FLOW
from accllm.host.flow_state import intact, read_state

STEPS = ["compress", "export", "compile", "csim", "perf", "bitstream", "deploy"]
TIMED = {"csim"}  # its artifact records wall time: compared as intact and re-run, not byte for byte


def _flow(tmp_path, name, calib_samples=2, **top):
    cfg = yaml.safe_load(DEFAULT_FLOW.read_text())
    cfg.update(steps=STEPS, verify=[], **top)
    cfg["compression"].update(calib_samples=calib_samples, calib_seqlen=64)
    cfg["evaluation"].update(perplexity_tokens=0, max_new_tokens=2, prompts=["def f(x):"])
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean build of the small flow (board kv260), and flows with other settings: on zcu104 (rewrites compile
    and every step after it) and with other calibration (rewrites every step)."""
    d = tmp_path_factory.mktemp("kill")
    a = _flow(d, "a")
    other = {"board": _flow(d, "b", board="zcu104"), "compression": _flow(d, "c", calib_samples=3)}
    state, _ = build(a, d / "clean")
    return a, other, d / "clean", state


def _kill_during(flow, out, step, fraction, seconds):
    """Start `accllm build flow -o out`; once it prints that ``step`` is running, wait ``fraction`` of the step's
    clean-build time and SIGKILL it. Returns (what it printed, whether it was still running when killed): the
    millisecond steps may end, or the whole build, before the kill lands."""
    proc = subprocess.Popen([sys.executable, "-m", "accllm.host.cli", "build", str(flow), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    printed = []
    for line in iter(proc.stdout.readline, b""):
        printed.append(line.decode(errors="replace"))
        if printed[-1].startswith(f"[{step}] running"):
            break
    time.sleep(fraction * seconds)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    printed.append(proc.communicate()[0].decode(errors="replace"))
    return "".join(printed), killed


def _check_against_clean(out, clean_dir, clean_state, ran):
    state = read_state(out)
    for name in STEPS:
        rec, ref = state["steps"][name], clean_state["steps"][name]
        assert intact(out, rec), f"{name}: a recorded file does not match its sha256"
        if name in TIMED:
            assert rec["files"].keys() == ref["files"].keys()
        else:
            assert rec["files"] == ref["files"], f"{name}: files differ from the clean build"
    # The killed run's temporary folders are cleared by the next run.
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".old"))]
    return state


def _case(clean, tmp_path, step, fraction, other_settings):
    a, other, clean_dir, clean_state = clean
    out = tmp_path / "build"
    shutil.copytree(clean_dir, out)
    if not other_settings:
        # Same settings: damage the step's artifact so that it runs again, then kill it mid-way.
        sorted(p for p in (out / step).rglob("*") if p.is_file())[0].unlink()
    b = other["compression" if step in ("compress", "export") else "board"]
    log, killed = _kill_during(b if other_settings else a, out, step, fraction, clean_state["steps"][step]["seconds"])
    assert f"[{step}] running" in log  # the kill point is at or after the start of the step
    at = [line for line in log.splitlines() if line.startswith("[")][-1:]
    state, _ = build(a, out)
    _check_against_clean(out, clean_dir, clean_state, state["ran"])
    print(f"KILL {step} +{fraction:.2f} other_settings={other_settings} killed={killed}: last line {at}; "
          f"rerun ran {state['ran']}")
    return log, killed, state["ran"]


# The default set: a few kill points in the steps that rerun cheaply, killed while flow B (other board) rewrites
# them, then flow A (the clean build's) run again; and one with the same settings over a deleted file.
FAST = [("compile", 0.0, True), ("compile", 0.5, True), ("csim", 0.3, True), ("compile", 0.5, False)]


@pytest.mark.parametrize("step, fraction, other_settings", FAST)
def test_killed_build_reruns_to_the_clean_result(clean, tmp_path, step, fraction, other_settings):
    log, killed, ran = _case(clean, tmp_path, step, fraction, other_settings)
    assert killed, log  # these steps take seconds: the kill lands inside them
    if not other_settings:
        assert step in ran  # its damaged artifact was rebuilt, not skipped


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("seed", range(3))
def test_killed_build_matrix(clean, tmp_path, step, seed):
    """Every step, killed at random points, with other settings and with the same ones over a deleted file."""
    rng = random.Random(f"{step}{seed}")
    _case(clean, tmp_path, step, rng.random(), other_settings=bool(seed % 2))


def test_deleted_or_modified_artifact_files_rerun_their_step(clean, tmp_path):
    a, _, clean_dir, clean_state = clean
    out = tmp_path / "build"
    shutil.copytree(clean_dir, out)
    (out / "compile" / "weights.blob").unlink()
    layer = out / "export" / "layer03.onnx"
    layer.write_bytes(layer.read_bytes()[:-10])
    state, _ = build(a, out)
    assert {"export", "compile"} <= set(state["ran"])
    _check_against_clean(out, clean_dir, clean_state, state["ran"])


def test_copied_build_folder_is_self_contained(clean, tmp_path):
    """state.json holds paths relative to the build folder: a copy skips every step and never reads the
    original (which is moved away here)."""
    a, _, clean_dir, clean_state = clean
    copy, moved = tmp_path / "copy", tmp_path / "moved"
    shutil.copytree(clean_dir, copy)
    state = read_state(copy)
    assert all(not os.path.isabs(r["artifact"]) for r in state["steps"].values())
    clean_dir.rename(moved)
    try:
        state, _ = build(a, copy)
    finally:
        moved.rename(clean_dir)
    assert state["ran"] == []
    text = (copy / "bitstream" / "hls.tcl").read_text() + (copy / "bitstream" / "blackbox.json").read_text()
    assert str(clean_dir) not in text and str(moved) not in text
