"""The flow runner on stand-in steps (fast): staging folders renamed into place, skips only over intact files,
verification cached with its step, third-party warnings summarised, state.json atomic and relative."""
import json
import warnings

import pytest

from accllm.host import flow as flowmod
from accllm.host.flow_config import FlowConfig
from accllm.host.flow_steps import Step

CALLS = {"a": 0, "b": 0, "verify_a": 0}
FAIL_B_AFTER_HALF = {"on": False}


def step_a(ctx):
    CALLS["a"] += 1
    d = ctx.step_dir("compress")
    (d / "weights.bin").write_bytes(b"w" * 1000)
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "tokenizer.json").write_text("{}")
    warnings.warn("a third-party style warning", DeprecationWarning)
    return d, {"n": 1}


def step_b(ctx):
    CALLS["b"] += 1
    d = ctx.step_dir("export")
    src = (ctx.artifacts["compress"] / "weights.bin").read_bytes()
    (d / "out.bin").write_bytes(src[:500])
    if FAIL_B_AFTER_HALF["on"]:
        raise KeyboardInterrupt  # stands for a kill after half of the output was written
    (d / "out.bin").write_bytes(src)
    return d / "out.bin", {}


def verify_a(ctx):
    CALLS["verify_a"] += 1
    return {"ok": True}


@pytest.fixture
def fake_steps(monkeypatch):
    mod = __name__
    monkeypatch.setattr(flowmod, "STEPS", [
        Step("compress", f"{mod}:step_a", ("model",), verify=f"{mod}:verify_a"),
        Step("export", f"{mod}:step_b", (), ("compress",)),
    ])
    for k in CALLS:
        CALLS[k] = 0
    FAIL_B_AFTER_HALF["on"] = False
    return FlowConfig(steps=["compress", "export"], verify=["compress"])


def test_verification_is_cached_with_its_step(fake_steps, tmp_path):
    flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    state = flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    assert state["ran"] == [] and CALLS == {"a": 1, "b": 1, "verify_a": 1}
    assert state["steps"]["compress"]["verification"] == {"ok": True}
    (tmp_path / "compress" / "sub" / "tokenizer.json").write_text("{ }")  # a modified file: rerun + re-verify
    state = flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    assert state["ran"] == ["compress"] and CALLS == {"a": 2, "b": 1, "verify_a": 2}  # same output: b skipped


def test_interrupted_step_leaves_the_previous_artifact_and_reruns(fake_steps, tmp_path):
    flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    good = (tmp_path / "export" / "out.bin").read_bytes()
    (tmp_path / "export" / "out.bin").unlink()
    FAIL_B_AFTER_HALF["on"] = True
    with pytest.raises(KeyboardInterrupt):
        flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    assert not (tmp_path / "export" / "out.bin").exists()  # the half-written file stayed in the staging folder
    FAIL_B_AFTER_HALF["on"] = False
    state = flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    assert state["ran"] == ["export"] and (tmp_path / "export" / "out.bin").read_bytes() == good
    assert not list(tmp_path.glob(".*.partial"))


def test_state_is_relative_and_lists_every_file(fake_steps, tmp_path):
    flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["steps"]["compress"]["artifact"] == "compress"
    assert state["steps"]["export"]["artifact"] == "export/out.bin"
    assert set(state["steps"]["compress"]["files"]) == {"weights.bin", "sub/tokenizer.json"}


def test_absolute_artifact_path_in_state_is_not_trusted(fake_steps, tmp_path):
    flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    state = json.loads((tmp_path / "state.json").read_text())
    state["steps"]["compress"]["artifact"] = str(tmp_path / "compress")  # as an older or foreign state file
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)["ran"] == ["compress"]


def test_third_party_warnings_are_summarised_in_one_line(fake_steps, tmp_path):
    lines = []
    flowmod.run_flow(fake_steps, tmp_path, log=lines.append)
    # This test module is not under site-packages, so its warning counts as accllm's own: shown once.
    assert sum("a third-party style warning" in line for line in lines) == 1
    with flowmod.warnings_summarised("x", lines.append):
        import warnings as w

        for _ in range(930):
            w.warn_explicit("shape", UserWarning, "/v/lib/python3.11/site-packages/qonnx/core/modelwrapper.py", 1)
    assert lines[-1] == "[x] 930 third-party warnings not shown (qonnx 930); ACCLLM_WARNINGS=1 shows them"


def test_a_code_change_reruns_the_steps_whose_folders_changed(fake_steps, tmp_path, monkeypatch):
    """A step's input hash covers the source of its folder and those below (accllm.host.flow.code_hash): an edit
    of hls/ reruns export but not compress; an edit of quant/ reruns both (export's code sits above quant/)."""
    code = {"quant": "1", "hls": "1"}
    monkeypatch.setattr(flowmod, "step_layers", lambda step: ("quant",) if step.name == "compress" else ("quant", "hls"))
    monkeypatch.setattr(flowmod, "code_hash", lambda layers: "/".join(code[x] for x in layers))
    flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)
    assert flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)["ran"] == []
    code["hls"] = "2"
    assert flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)["ran"] == ["export"]
    code["quant"] = "2"
    assert flowmod.run_flow(fake_steps, tmp_path, log=lambda m: None)["ran"] == ["compress", "export"]


def test_each_step_hashes_the_code_of_its_folder_and_those_below():
    from accllm.host.flow_steps import STEPS, step_layers

    layers = {s.name: step_layers(s) for s in STEPS}
    assert layers["compress"] == ("quant", "sim")  # its verification runs the golden model (sim/)
    assert layers["compile"] == ("quant", "sim", "hls") and layers["rtlsim"] == ("quant", "sim", "hls", "hw")
    assert step_layers(Step("x", "elsewhere:f", ())) == ()
    h = flowmod.code_hash(("quant",))
    assert len(h) == 64 and h == flowmod.code_hash(("quant",)) != flowmod.code_hash(("quant", "sim"))



def test_export_and_compile_redoes_a_build_made_by_other_source(tmp_path_factory, tmp_path):
    """hls.flow's on-disk cache (used by tests and benches) reuses work_dir only when its stamp matches the
    checkpoint files, settings and source; a stamp from other code makes it export and compile again."""
    import shutil

    from flow_fixtures import flow_paths

    from accllm.hls.flow import export_and_compile

    ckpt, onnx_dir, build = flow_paths(tmp_path_factory)
    for name in ("onnx", "build", "made_from.json"):
        src = build.parent / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    program = tmp_path / "build" / "program.bin"
    before = program.stat().st_mtime_ns
    export_and_compile(ckpt, tmp_path)
    assert program.stat().st_mtime_ns == before  # same checkpoint, settings, source: reused
    stamp = (tmp_path / "made_from.json").read_text()
    (tmp_path / "made_from.json").write_text(stamp.replace('"source": "', '"source": "0'))
    export_and_compile(ckpt, tmp_path)
    assert program.stat().st_mtime_ns != before and (tmp_path / "made_from.json").read_text() == stamp
    assert program.read_bytes() == (build / "program.bin").read_bytes()
