"""`accllm build`: the flow file's schema, and resumable steps that rerun exactly when their inputs change."""
import textwrap

import pytest
import yaml

from accllm.host.cli import main
from accllm.host.flow import build
from accllm.host.flow_config import DEFAULT_FLOW, FlowError, load_flow
from accllm.host.flow_steps import STEP_NAMES


def _write(tmp_path, text):
    p = tmp_path / "flow.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_default_flow_is_valid_and_names_every_step():
    flow = load_flow(DEFAULT_FLOW)
    assert flow.steps == list(STEP_NAMES) or set(flow.steps) <= set(STEP_NAMES)
    assert flow.engine.group_size == flow.compression.group_size


@pytest.mark.parametrize("name", sorted(p.name for p in DEFAULT_FLOW.parent.glob("*.yaml")))
def test_every_shipped_flow_is_valid(tmp_path, name):
    """Each flow in host/flows passes the schema and the engine's checks, and its compression settings validate
    (a flow taking a checkpoint is checked without it: the checkpoint is a local artifact, not shipped)."""
    raw = yaml.safe_load((DEFAULT_FLOW.parent / name).read_text())
    raw.pop("checkpoint", None)
    flow = load_flow(_write(tmp_path, yaml.safe_dump(raw)))
    s = flow.compression.settings()
    assert (flow.engine.sinks, flow.engine.window, flow.engine.group_size) == (s.sinks, s.window, s.group_size)
    if s.qat_steps:  # a distilling flow: at batch 16, lr 1e-4 SmolLM2's distillation diverged on the GPU
        assert s.qat_batch >= 64 and s.qat_seconds > 0


@pytest.mark.parametrize("text, message", [
    ("model: bundled\ncompresion: {}\n", r"compresion: unknown key"),
    ("compression: {sinks: 4, windw: 12}\n", r"compression\.windw: unknown key"),
    ("engine: {lanes: sixteen}\n", r"engine\.lanes: Input should be a valid integer"),
    ("engine: {lanes: 12}\n", r"engine\.lanes: .*power of two"),
    ("steps: [compress, synthesize]\n", r"steps: .*unknown step\(s\) \['synthesize'\]"),
    ("board: u250\n", r"board: .*unknown board 'u250'; known boards: kv260, u280, zcu104"),
    ("engine: {group_size: 64}\n", r"engine\.group_size \(64\) differs from compression\.group_size \(32\)"),
    ("compression: {weight_bits: 5}\n", r"unsupported weight bit width 5"),
    # Widths the compression supports but the engine does not run, refused before any step runs.
    ("compression: {weight_bits: 3}\n", r"compression\.weight_bits is 3: the engine runs W2A8KV4"),
    ("compression: {kv_bits: 8}\n", r"compression\.kv_bits is 8: the engine runs W2A8KV4"),
    ("compression: {lambda_attention: false}\n", r"compression\.lambda_attention is false"),
    ("engine: {lanes: 32}\n", r"engine\.lanes \(32\) and engine\.group_size \(32\): group size 32 must be a multiple of 64"),
    ("- just\n- a list\n", r"a flow file is a mapping"),
])
def test_malformed_flow_files_get_clear_messages(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(FlowError, match=message) as e:
        load_flow(path)
    assert str(path) in str(e.value)


def test_other_widths_pass_when_the_flow_stops_at_compress(tmp_path):
    flow = load_flow(_write(tmp_path, "compression: {weight_bits: 3}\nsteps: [compress]\nverify: []\n"))
    assert flow.compression.weight_bits == 3


def test_cli_reports_a_bad_flow_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, "board: u250\n")
    assert main(["build", str(path), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown board 'u250'" in err and "Traceback" not in err


def test_flow_reruns_exactly_the_steps_whose_inputs_changed(tmp_path):
    base = yaml.safe_load(DEFAULT_FLOW.read_text())
    base["steps"] = ["compress", "export", "compile", "csim", "perf", "bitstream", "deploy"]
    base["verify"] = []
    base["compression"].update(calib_samples=2, calib_seqlen=64)
    base["evaluation"].update(perplexity_tokens=0, max_new_tokens=4, prompts=["def f(x):"])
    out = tmp_path / "build"

    def run(**changes):
        cfg = yaml.safe_load(yaml.safe_dump(base))
        for dotted, value in changes.items():
            d = cfg
            *head, last = dotted.split(".")
            for k in head:
                d = d[k]
            d[last] = value
        path = tmp_path / "flow.yaml"
        path.write_text(yaml.safe_dump(cfg))
        state, report = build(path, out)
        return state["ran"], report

    ran, report = run()
    assert ran == base["steps"]
    assert "| compile | yes |" in report.read_text()
    ran, report = run()
    assert ran == []  # nothing changed: every step skipped
    assert "no (unchanged)" in report.read_text()
    ran, _ = run(**{"evaluation.prompts": ["class A:"]})
    assert ran == ["csim"]
    ran, _ = run(board="zcu104")
    assert ran == ["compile", "csim", "perf", "bitstream", "deploy"]
    ran, _ = run(board="zcu104", **{"compression.calib_samples": 3})
    assert ran == base["steps"]  # every step depends on the compressed model
    assert (out / "deploy" / "run.sh").read_text().count("--board zcu104") == 1
