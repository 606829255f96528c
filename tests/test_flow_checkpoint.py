"""`checkpoint: DIR` in a flow file: the compress step takes an existing compressed checkpoint (a verified copy,
the source untouched) instead of compressing; its compression.json must agree with the flow on the keys the engine
runs, or the flow is refused naming the key; a checkpoint without a quantised LM head gets one in the copy."""
import json
import shutil

import pytest
import yaml

from flow_fixtures import one_thread
from test_w4_linears import w4_checkpoint

_one_thread = pytest.fixture(autouse=True)(one_thread)

ENGINE = {"lanes": 16, "group_size": 32, "sinks": 2, "window": 14}
COMPRESSION = {"sparsity": "2:4", "weight_bits": 4, "group_size": 32, "sinks": 2, "window": 14}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return w4_checkpoint(tmp_path_factory.mktemp("flow_ckpt") / "ckpt", "2:4")


def _flow(tmp_path, ckpt, **over):
    cfg = {"name": "from_ckpt", "model": "bundled", "checkpoint": str(ckpt), "compression": dict(COMPRESSION),
           "engine": dict(ENGINE), "steps": ["compress", "export", "compile", "csim"], "verify": ["csim"],
           "evaluation": {"prompts": ["def f(x):"], "max_new_tokens": 4, "perplexity_tokens": 0}}
    for k, v in over.items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    p = tmp_path / "flow.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _manifest(d):
    from accllm.quant.integrity import MANIFEST

    return (d / MANIFEST).read_text()


def test_flow_builds_from_a_checkpoint_without_compressing(tmp_path, ckpt):
    from accllm.hls import program as prog
    from accllm.host.flow import build

    before = _manifest(ckpt)
    state, report = build(_flow(tmp_path, ckpt), tmp_path / "b")
    assert state["ran"] == ["compress", "export", "compile", "csim"]
    comp = state["steps"]["compress"]["metrics"]
    assert comp["checkpoint"] == str(ckpt.resolve()) and comp["made_with"]["weight_bits"] == 4
    assert "head_quantised" not in comp  # the checkpoint's own 4-bit head, copied as it is
    assert _manifest(tmp_path / "b" / "compress") == before == _manifest(ckpt)  # a verified copy, source untouched
    v = state["steps"]["csim"]["verification"]
    assert v["integer_mismatches"] == 0 and v["prompts_same_tokens"] == "1/1"
    _, instrs, _, _, _ = prog.read_compiled(tmp_path / "b" / "compile")
    assert {prog.split_mode(i.mode)[1] for i in instrs if i.op == prog.OP_LINEAR} == {4}
    state, _ = build(_flow(tmp_path, ckpt), tmp_path / "b")
    assert state["ran"] == []  # same checkpoint content: nothing reruns


def test_changed_checkpoint_content_reruns_compress(tmp_path, ckpt):
    from accllm.host.flow import build
    from accllm.quant.integrity import write_manifest

    mine = tmp_path / "ckpt"
    shutil.copytree(ckpt, mine)
    flow = _flow(tmp_path, mine, steps=["compress"], verify=[])
    assert build(flow, tmp_path / "b")[0]["ran"] == ["compress"]
    meta = json.loads((mine / "compression.json").read_text())
    meta["note"] = "edited"
    (mine / "compression.json").write_text(json.dumps(meta))
    write_manifest(mine)
    assert build(flow, tmp_path / "b")[0]["ran"] == ["compress"]


@pytest.mark.parametrize("over, message", [
    ({"compression": {"weight_bits": 2}}, r"compression\.weight_bits is 2 but checkpoint .* was made with weight_bits 4"),
    ({"compression": {"sparsity": "none"}}, r"compression\.sparsity is 'none' but checkpoint .* made with sparsity '2:4'"),
    ({"compression": {"sinks": 4}, "engine": {"sinks": 4}}, r"compression\.sinks is 4 but checkpoint"),
])
def test_flow_refuses_a_checkpoint_that_disagrees(tmp_path, ckpt, over, message):
    from accllm.host.flow_config import FlowError, load_flow

    with pytest.raises(FlowError, match=message):
        load_flow(_flow(tmp_path, ckpt, **over))


def test_flow_refuses_a_folder_that_is_no_checkpoint(tmp_path):
    from accllm.host.flow_config import FlowError, load_flow

    with pytest.raises(FlowError, match=r"checkpoint: .*nowhere is not a compressed checkpoint folder"):
        load_flow(_flow(tmp_path, tmp_path / "nowhere"))


def test_checkpoint_without_quantised_head_gets_one_in_the_copy(tmp_path):
    """A checkpoint written before heads were quantised (fp16 head): the copy gets the engine's 4-bit RTN head, the
    source keeps its fp16 head."""
    from accllm.host.flow import build
    from accllm.quant.checkpoint import save_compressed
    from accllm.quant.compress import compress
    from accllm.quant.quantize import CompressionSettings
    from accllm.sim.golden import GoldenModel
    from quant_fixtures import tiny_model, tokenizer

    s = CompressionSettings(weight_bits=4, head_bits=None, weight_method="rtn", calib_samples=4, calib_seqlen=32,
                            group_size=32, sinks=2, window=14)
    model, masks = compress(tiny_model(seed=5), tokenizer(), s, device="cpu", progress=False)
    src = tmp_path / "fp16head"
    save_compressed(model, tokenizer(), s, masks, src)
    before = _manifest(src)
    state, _ = build(_flow(tmp_path, src, steps=["compress"], verify=[]), tmp_path / "b")
    assert state["steps"]["compress"]["metrics"]["head_quantised"].startswith("4-bit rtn")
    assert _manifest(src) == before
    assert json.loads((src / "compression.json").read_text())["settings"].get("head_bits") is None
    g = GoldenModel.load(tmp_path / "b" / "compress")
    assert g.w.lm_head.wbits == 4 and g.d.wbits == 4
